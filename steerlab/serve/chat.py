"""A steered conversation: the library side of `steerlab chat`, with no terminal in it.

A :class:`ChatSession` keeps the conversation (user and assistant turns, formatted with the
model's chat template through :meth:`~steerlab.model.handle.ModelHandle.format_messages`) and the
steering setting: one of the loaded vectors and the other fields of a
:class:`~steerlab.steering.setting.SteeringSetting` (multiplier, layers, norm ratio, positions,
intervention, condition). Each user
message gets the steered reply and, side by side, the unsteered model's reply to the same
conversation; the conversation keeps the steered reply (the model being steered), so the
unsteered column always answers what the steered model was asked. Commands typed between
turns change the setting (:meth:`ChatSession.command`, :data:`COMMANDS`). Decoding is greedy.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from steerlab.model.generation import generate
from steerlab.model.handle import ModelHandle
from steerlab.steering.conditions import Condition
from steerlab.steering.hooks import POSITIONS, Positions
from steerlab.steering.setting import INTERVENTIONS, Composition, Intervention, SteeringSetting
from steerlab.steering.vectors import SteeringVector

COMMANDS: dict[str, str] = {
    "/vector NAME": "steer with a loaded vector ('/vector none': unsteered; '/vector': list them)",
    "/multiplier X": "the steering multiplier (negative steers the other way)",
    "/layers L,...": "apply at these layers ('all', or 'default': the vector's own)",
    "/norm R": "scale the vector to R × the residual norm ('/norm off': as trained)",
    "/positions P": "steer all, prompt or generated positions",
    "/intervention I": "add the vector, ablate its direction, or turn toward it (angular: the "
                       "multiplier is an angle in degrees)",
    "/condition off": "drop the condition: steer every prompt",
    "/side": "toggle the unsteered reply beside the steered one",
    "/reset": "start a new conversation (the setting stays)",
    "/help": "list the commands",
    "/quit": "leave",
}
"""Every command with what it does (``/help`` prints this)."""

UNSTEERED = "unsteered"
_SETTING = ("vector", "multiplier", "layers", "norm_ratio", "positions", "intervention",
            "condition")
"""The session's attributes a command may change (restored when the change does not apply)."""


class ChatError(ValueError):
    """A command or setting that cannot apply; the message says why."""


@dataclass(frozen=True)
class Reply:
    """One reply and the setting that produced it (``"unsteered"`` or e.g. ``"refusal ×4"``)."""

    label: str
    text: str


class ChatSession:
    """A conversation with ``model`` under a changeable steering setting (module docstring)."""

    def __init__(
        self,
        model: ModelHandle,
        vectors: Mapping[str, SteeringVector] | None = None,
        vector: str | None = None,
        multiplier: float = 1.0,
        layers: list[int] | None = None,
        norm_ratio: float | None = None,
        positions: Positions = "all",
        intervention: Intervention = "add",
        condition: Condition | None = None,
        side_by_side: bool = True,
        max_new_tokens: int = 128,
    ) -> None:
        self.model = model
        self.vectors = dict(vectors or {})
        self.vector: str | None = None
        self.multiplier = float(multiplier)
        self.layers = layers
        self.norm_ratio = norm_ratio
        self.positions: Positions = positions
        self.intervention: Intervention = intervention
        self.condition = condition
        self.side_by_side = side_by_side
        self.max_new_tokens = max_new_tokens
        self.messages: list[dict[str, str]] = []
        self.done = False
        if vector is None and len(self.vectors) == 1:
            vector = next(iter(self.vectors))
        if vector is not None:
            self.command(f"/vector {vector}")
        self._check()

    # ---- the setting ------------------------------------------------------------------------

    @property
    def steered(self) -> bool:
        """Whether replies are steered at all (a vector and a non-zero multiplier)."""
        return self.vector is not None and self.multiplier != 0

    def describe(self) -> str:
        """The current setting in words."""
        if self.vector is None:
            return "unsteered (no vector chosen)"
        where = f"layers {self.layers}" if self.layers is not None else "the vector's layers"
        norm = f", norm ratio {self.norm_ratio:g}" if self.norm_ratio is not None else ""
        how = "".join(f", {value}" for value, default in (
            (self.intervention, "add"), (f"{self.positions} positions", "all positions"))
            if value != default)
        gate = f", if condition {self.condition.id} holds" if self.condition else ""
        side = "; unsteered reply beside it" if self.side_by_side else ""
        return f"{self.label()} at {where}{norm}{how}{gate}{side}"

    def label(self) -> str:
        """The steered column's heading: vector and multiplier."""
        return f"{self.vector} ×{self.multiplier:g}" if self.steered else UNSTEERED

    def setting(self) -> SteeringSetting | None:
        """The current steering setting (None without a vector)."""
        if self.vector is None:
            return None
        return SteeringSetting(self.vectors[self.vector], self.multiplier, self.layers,
                               self.norm_ratio, self.positions, self.intervention, self.condition)

    def _check(self) -> None:
        """Raise :class:`ChatError` if the setting cannot steer this model."""
        try:
            setting = self.setting()
            if setting is not None:
                Composition((setting,)).fit(self.model)
                Composition((setting,)).check()
        except ValueError as err:
            raise ChatError(str(err)) from None

    def steering(self) -> AbstractContextManager:
        """The context that applies the current setting (nothing when unsteered)."""
        setting = self.setting()
        return setting.apply(self.model) if setting and self.steered else nullcontext()

    def command(self, line: str) -> str:
        """Apply one ``/command`` (see :data:`COMMANDS`); returns what to tell the user. A bad
        command or value raises :class:`ChatError` and leaves the setting as it was."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip()
        handlers = {"/vector": self._set_vector, "/multiplier": self._set_multiplier,
                    "/layers": self._set_layers, "/norm": self._set_norm,
                    "/positions": self._set_positions, "/intervention": self._set_intervention,
                    "/condition": self._set_condition}
        if name in handlers:
            previous = {key: getattr(self, key) for key in _SETTING}
            message = handlers[name](argument)
            try:
                self._check()
            except ChatError:
                for key, value in previous.items():
                    setattr(self, key, value)
                raise
            return message or f"now: {self.describe()}"
        if argument:
            raise ChatError(f"{name} takes no argument, got {argument!r}")
        if name == "/side":
            self.side_by_side = not self.side_by_side
            return f"side by side {'on' if self.side_by_side else 'off'}: {self.describe()}"
        if name == "/reset":
            self.messages.clear()
            return f"new conversation; {self.describe()}"
        if name == "/help":
            return "\n".join(f"{usage:<16} {what}" for usage, what in COMMANDS.items())
        if name == "/quit":
            self.done = True
            return "bye"
        raise ChatError(f"unknown command {name!r}; /help lists them")

    def _set_vector(self, name: str) -> str | None:
        if not name:
            return f"vectors: {', '.join(self.vectors) or 'none loaded'}; now: {self.describe()}"
        if name == "none":
            self.vector = None
        elif name not in self.vectors:
            loaded = ", ".join(self.vectors) or "none"
            raise ChatError(f"unknown vector {name!r} (loaded: {loaded})")
        else:
            self.vector = name
        return None

    def _set_multiplier(self, text: str) -> None:
        try:
            self.multiplier = float(text)
        except ValueError:
            raise ChatError(f"/multiplier needs a number, got {text!r}") from None

    def _set_layers(self, text: str) -> None:
        if text in ("", "default"):
            self.layers = None
        elif text == "all":
            self.layers = list(range(self.model.n_layers))
        else:
            try:
                self.layers = [int(x) for x in text.split(",") if x.strip()]
            except ValueError:
                raise ChatError(f"/layers needs comma-separated integers, 'all' or 'default', "
                                f"got {text!r}") from None

    def _set_norm(self, text: str) -> None:
        if text in ("", "off", "none"):
            self.norm_ratio = None
            return
        try:
            ratio = float(text)
        except ValueError:
            raise ChatError(f"/norm needs a number or 'off', got {text!r}") from None
        if ratio <= 0:
            raise ChatError(f"/norm needs a positive ratio, got {ratio:g}")
        self.norm_ratio = ratio

    def _set_positions(self, text: str) -> None:
        if text not in POSITIONS:
            raise ChatError(f"/positions needs one of {', '.join(POSITIONS)}, got {text!r}")
        self.positions = text  # type: ignore[assignment]

    def _set_intervention(self, text: str) -> None:
        if text not in INTERVENTIONS:
            raise ChatError(f"/intervention needs one of {', '.join(INTERVENTIONS)}, "
                            f"got {text!r}")
        self.intervention = text  # type: ignore[assignment]

    def _set_condition(self, text: str) -> None:
        if text not in ("off", "none"):
            raise ChatError(f"/condition takes 'off' (a condition comes from --condition), "
                            f"got {text!r}")
        self.condition = None

    # ---- the conversation -------------------------------------------------------------------

    def send(self, text: str) -> list[Reply]:
        """Answer a user message: the unsteered reply first when side by side (and steered),
        then the steered one, which joins the conversation."""
        if not text.strip():
            raise ChatError("an empty message: type something, or /help")
        asked = [*self.messages, {"role": "user", "content": text}]
        prompt = self.model.format_messages(asked)
        replies = []
        if self.side_by_side and self.steered:
            replies.append(Reply(UNSTEERED, self._reply(prompt, nullcontext())))
        replies.append(Reply(self.label(), self._reply(prompt, self.steering())))
        self.messages = [*asked, {"role": "assistant", "content": replies[-1].text}]
        return replies

    def _reply(self, prompt: str, steering: AbstractContextManager) -> str:
        with steering:
            return generate(self.model, [prompt], self.max_new_tokens, format_prompts=False,
                            progress=False)[0]
