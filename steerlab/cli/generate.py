"""Generation: generate, demo, serve, chat."""

# Library imports sit inside the commands, for start-up speed (see steerlab/cli/__init__.py).

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from steerlab.cli.app import app, console
from steerlab.cli.inputs import (
    fail,
    load_engine,
    load_handle,
    load_named_conditions,
    load_named_vectors,
    load_vector,
)
from steerlab.cli.options import (
    AllowedHostsOpt,
    EngineOpt,
    ModelOpt,
    VllmOptionsOpt,
    finite_number,
    parse_floats,
    parse_layers,
    parse_vllm_options,
    placement_options,
)
from steerlab.cli.steering import SteeringChoice, steering_options
from steerlab.model.catalog import DEFAULT_MODEL
from steerlab.model.placement import Placement


@app.command()
@placement_options
@steering_options("one")
def generate(
    prompt: Annotated[str, typer.Argument(help="The user prompt (the chat template is applied).")],
    model: ModelOpt = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.", min=1)] = 80,
    compare: Annotated[bool, typer.Option(help="Also print the unsteered reply.")] = True,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Generate a reply (greedy), steered when a vector is given."""
    from contextlib import AbstractContextManager, nullcontext

    from steerlab.model.generation import generate as run_generate
    from steerlab.steering.setting import STEERED

    assert steering is not None
    if steering.condition is not None and engine == "vllm":
        fail("--condition is not available with --engine vllm")
    handle = load_handle(model, placement)
    setting = steering.setting(handle.n_layers) if steering.steered else None
    if setting is not None:
        try:
            setting.apply(handle).remove()  # checked against the model before any generation
        except ValueError as err:
            fail(str(err))
        if setting.condition is not None:
            holds = setting.condition.applies(handle, [prompt], progress=False)[0]
            verdict = "holds: steering" if holds else "does not hold: unsteered"
            console.print(f"condition {setting.condition.id} {verdict}", highlight=False)
    settings = [None, setting] if setting is not None and compare else [setting]
    generator = load_engine(model, engine, placement=placement)
    if generator is not None:  # every reply in one batch
        ids = handle.encode_prompt(handle.format_prompt(prompt))
        replies = [handle.tokenizer.decode(r.token_ids, skip_special_tokens=True).strip()
                   for r in generator.generate([ids] * len(settings), settings,
                                               max_tokens=max_new_tokens)]
    else:
        replies = []
        for each in settings:
            context: AbstractContextManager = each.apply(handle) if each else nullcontext()
            with context:
                replies.append(run_generate(handle, [prompt], max_new_tokens, progress=False)[0])
    for each, reply in zip(settings, replies):
        if len(settings) > 1:
            label = f"{STEERED[each.intervention]} ×{each.multiplier:g}" if each else "unsteered"
            console.print(f"[bold]{label}[/bold]")
        console.print(reply)


@app.command()
@placement_options
def demo(
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Directory for records, vector and report.")] = Path("demo_out"),
    model: ModelOpt = DEFAULT_MODEL,
    behaviour: Annotated[str, typer.Option(
        help="Bundled behaviour: sycophancy or refusal.")] = "refusal",
    layer: Annotated[Optional[int], typer.Option(
        help="Layer to steer (default: the demo's choice).")] = None,
    multipliers: Annotated[Optional[str], typer.Option(help="Comma-separated multipliers.")] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Train a CAA vector on a bundled behaviour, sweep multipliers, compare generations, report."""
    from steerlab.experiment.demo import DemoConfig, run_demo

    config = DemoConfig(model=model, placement=placement or Placement(), behaviour=behaviour,
                        out_dir=out)
    if layer is not None:
        config.layer = layer
    if multipliers:
        config.multipliers = parse_floats(multipliers)
    run_demo(config, console)


@app.command()
@placement_options
def serve(
    model: ModelOpt = DEFAULT_MODEL,
    vector: Annotated[Optional[list[str]], typer.Option(
        "--vector", "-v", help="A vector clients may apply, as name=path.safetensors (a bare path "
        "is named by its file stem); repeatable.")] = None,
    condition: Annotated[Optional[list[str]], typer.Option(
        "--condition", "-c", help="A condition clients may gate steering on "
        "(from `steerlab condition`), as name=path.safetensors; repeatable.")] = None,
    host: Annotated[str, typer.Option(
        help="Address to listen on; the default accepts "
        "connections from this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 8000,
    max_multiplier: Annotated[float, typer.Option(
        help="Requests may use multipliers in [-this, this].", min=0,
        callback=finite_number)] = 8.0,
    max_tokens: Annotated[int, typer.Option(
        help="Most tokens one request may generate (and the default).", min=1)] = 512,
    max_context: Annotated[Optional[int], typer.Option(
        help="Prompt + answer tokens allowed (default: the model's maximum positions).",
        min=1)] = None,
    max_batch_size: Annotated[int, typer.Option(
        help="Requests with identical settings generated together, at most.", min=1)] = 8,
    batch_wait_ms: Annotated[float, typer.Option(
        help="Milliseconds a request waits for others with its settings to join its batch.",
        min=0)] = 20.0,
    api_key_env: Annotated[str, typer.Option(
        help="Environment variable holding the API key clients must send "
        "as a bearer token; unset or empty: no key. (Never on the command "
        "line, where other users can read it.)")] = "STEERLAB_API_KEY",
    max_body_bytes: Annotated[int, typer.Option(
        help="Largest request body accepted; larger ones get 413.", min=1024)] = 2 << 20,
    body_timeout_s: Annotated[float, typer.Option(
        help="Seconds a client may take to send its request body; slower ones get 408.",
        min=0.001)] = 30.0,
    served_model_name: Annotated[Optional[str], typer.Option(
        help="Model id clients send and /v1/models lists (default: a built-in or hub name as "
        "given, a local model by its directory or file name, never its path).")] = None,
    engine: EngineOpt = "transformers",  # type: ignore[assignment]
    vllm_option: VllmOptionsOpt = None,
    runs: Annotated[Path, typer.Option(
        help="With the web interface: the folder of run directories its runs page lists.")]
        = Path("runs"),
    web: Annotated[bool, typer.Option(
        help="Also serve the web interface (playground, runs) at /web/.")] = False,
    allowed_host: AllowedHostsOpt = None,
    placement: Optional[Placement] = None,
) -> None:
    """Serve the model over an OpenAI-compatible API (chat completions, streaming) with steering.

    Each request picks vectors and multipliers with an extra body field, e.g. with the openai
    client: extra_body={"steering": [{"vector": "refusal", "multiplier": 4}]}; none by default.
    A term may also set layers, norm_ratio, positions, "intervention": "ablate" (project the
    direction out with strength multiplier) and "condition": a --condition name. With --engine
    vllm every request joins one continuous batch, whatever its steering (no conditions), with
    vLLM's defaults (compiled, prefix caching) unless --vllm-option says otherwise.
    """
    import os

    from steerlab.serve.launch import serve as run_server
    from steerlab.serve.schema import ServeSettings
    from steerlab.serve.service import served_name

    engine_options = parse_vllm_options(vllm_option, engine)
    if web and runs.exists() and not runs.is_dir():
        fail(f"--runs {runs} is a file: give the folder that holds run directories")
    vectors = load_named_vectors(vector or [])
    conditions = load_named_conditions(condition or [])
    key = os.environ.get(api_key_env) or None
    settings = ServeSettings(
        model_name=served_model_name, max_multiplier=max_multiplier, max_tokens=max_tokens,
        max_context=max_context, api_key=key, max_batch_size=max_batch_size,
        batch_wait_ms=batch_wait_ms, max_body_bytes=max_body_bytes, body_timeout_s=body_timeout_s,
        web=web, runs=str(runs) if web else None, host=host, allowed_hosts=allowed_host or [],
    )
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/yellow] listening on {host} without an API key "
                      f"(set ${api_key_env})")
    if engine == "vllm" and conditions:
        fail("--condition is not available with --engine vllm")
    handle = load_handle(model, placement)
    generator = load_engine(model, engine, max_context, placement=placement,
                            options=engine_options)
    console.print(f"serving {settings.model_name or served_name(model)} on http://{host}:{port}/v1 "
                  f"with vectors: {', '.join(vectors) or 'none'}; "
                  f"conditions: {', '.join(conditions) or 'none'}; "
                  f"API key {'required' if key else 'not required'}")
    if web:
        console.print(f"web interface: http://{host}:{port}/web/"
                      + (f"?key=<${api_key_env}> (once; a cookie keeps it)" if key else ""))
    try:
        run_server(handle, vectors, settings, host=host, port=port, conditions=conditions,
                   engine=generator)
    except ValueError as err:
        fail(str(err))


def _web(**options: Any) -> None:
    serve(**options, web=True)


_web.__doc__ = """The web interface (steering playground) over `steerlab serve`'s API: the same
options, model, vectors, limits and key; open http://127.0.0.1:8000/web/ (with a key: once with
?key=<key>)."""
_web.__signature__ = inspect.signature(serve).replace(  # type: ignore[attr-defined]
    parameters=[p for p in inspect.signature(serve).parameters.values() if p.name != "web"])
_web.__annotations__ = {p.name: p.annotation for p in _web.__signature__.parameters.values()}
app.command("web")(_web)


@app.command()
@placement_options
@steering_options("named")
def chat(
    model: ModelOpt = DEFAULT_MODEL,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens per reply.", min=1)] = 128,
    side: Annotated[bool, typer.Option(
        "--side/--no-side",
        help="Show the unsteered reply beside the steered one (toggle with /side).")] = True,
    steering: Optional[SteeringChoice] = None,
    placement: Optional[Placement] = None,
) -> None:
    """Chat with the model in the terminal, steered, beside the unsteered reply.

    Change the vector (/vector NAME), multiplier, layers, norm ratio, positions and
    intervention between turns; /help lists the commands."""
    from steerlab.serve.chat import ChatError, ChatSession

    assert steering is not None
    vectors = {name: load_vector(path) for name, path in steering.vectors.items()}
    handle = load_handle(model, placement)
    try:
        session = ChatSession(handle, vectors, multiplier=steering.multipliers[0],
                              layers=parse_layers(steering.layers, handle.n_layers),
                              norm_ratio=steering.norm_ratio,
                              positions=steering.positions,  # type: ignore[arg-type]
                              intervention=steering.intervention,  # type: ignore[arg-type]
                              condition=steering.gate,
                              side_by_side=side, max_new_tokens=max_new_tokens)
    except ChatError as err:
        fail(str(err))
    console.print(f"chatting with {handle.name}: {session.describe()}. /help lists the commands, "
                  "/quit leaves.", highlight=False)
    while not session.done:
        try:
            line = console.input("[bold]you>[/bold] ")
        except (EOFError, KeyboardInterrupt):
            break
        try:
            if line.strip().startswith("/"):
                console.print(session.command(line), highlight=False)
                continue
            with console.status("generating"):
                replies = session.send(line)
        except ChatError as err:
            console.print(f"[red]error:[/red] {err}", highlight=False)
            continue
        table = Table(show_lines=False, expand=True)
        for reply in replies:
            table.add_column(reply.label, ratio=1, overflow="fold")
        table.add_row(*(reply.text for reply in replies))
        console.print(table)
