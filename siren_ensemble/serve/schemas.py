"""Request and response bodies: the OpenAI moderation wire format and our richer /v1/score form."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from ..conversation import Judge
from ..ensemble import EnsembleResult
from ..ranking.result import RequestedMethod
from ..taxonomy import OPENAI_KEYS

StrictText = Annotated[str, Strict()]
#: Strict: "0.5" and true are refused, not read as numbers.
Threshold = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]

#: Our verdict is the ``harmful`` category (and ``flagged``). With category heads the OpenAI keys our
#: taxonomy maps to are judged (``siren_ensemble.taxonomy``): a key is true when the text is flagged and
#: a category mapping to it reaches its threshold. Every other key (all of them without category heads,
#: and for a text that failed) is present, so clients that read them keep working, and answers false /
#: 0.0 with no applied input type: "not classified", never "safe".
HARM_CATEGORY = "harmful"
OPENAI_CATEGORIES = OPENAI_KEYS


class ModerationRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI clients may send options we do not use.
    model_config = ConfigDict(extra="ignore")
    input: StrictText | list[StrictText]
    model: StrictText | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        # Checked here so the message names the offending item, not both branches of the union.
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not isinstance(item, str):
                    raise PydanticCustomError("text_type", "item {index}: expected a string, got {got}",
                                              {"index": index, "got": type(item).__name__})
        elif not isinstance(value, str):
            raise PydanticCustomError("input_type", "expected a string or a list of strings, got {got}",
                                      {"got": type(value).__name__})
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictText | None = None
    prompt: StrictText | None = None
    response: StrictText | None = None
    #: OpenAI-style chat messages ``[{"role", "content"}, ...]``: the last user turn and its answer are judged in
    #: the context of the turns before (parsed by ``Conversation.parse``, whose errors name the message).
    messages: list[Any] | None = None
    #: With ``messages``: turns of context before the judged ones (default: the config's ``conversation.window``).
    window: Annotated[int, Strict(), Field(ge=0, le=512)] | None = None
    #: With ``messages``: "either" (in context and the last turns alone, the higher score), "context" or
    #: "last_turns" (default: the config's ``conversation.judge``).
    judge: Judge | None = None
    threshold: Threshold | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreRequest":
        forms = [self.text is not None, self.prompt is not None or self.response is not None, self.messages is not None]
        if sum(forms) > 1:
            raise ValueError("pass one of `text`, `prompt`/`response` or `messages`, not several")
        if not any(forms):
            raise ValueError("provide `text`, at least one of `prompt`/`response`, or `messages`")
        for name in ("window", "judge"):
            if getattr(self, name) is not None and self.messages is None:
                raise ValueError(f"`{name}` applies to `messages` only")
        return self


class RankRequest(BaseModel):
    """Candidate responses to one prompt, to be ranked safest first (``Ensemble.rank``)."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictText
    candidates: list[StrictText] = Field(min_length=1)
    method: RequestedMethod = "auto"


class RankedCandidateBody(BaseModel):
    index: int
    score: float
    members: dict[str, float | None]
    flagged: bool | None = None
    errors: dict[str, str] = {}


class RankResponse(BaseModel):
    method: str
    ranking: list[RankedCandidateBody]


class StreamStart(BaseModel):
    """The first WebSocket message: the prompt the streamed response answers, and a threshold override."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictText | None = None
    threshold: Threshold | None = None


class StreamChunk(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk: StrictText


class SirenDetails(BaseModel):
    """Our own fields beside the OpenAI ones."""

    score: float
    threshold: float
    members: dict[str, float | None]
    truncated: bool
    errors: dict[str, str] = {}
    #: With the cascade combiner: the index of the stage (``combiner.stages``) that decided the text.
    decided_by: int | None = None
    #: With category heads: the score of each category of our taxonomy (None for a text that failed).
    harm_categories: dict[str, float] | None = None
    #: With category heads: the highest-scoring OpenAI key of a flagged text.
    top_category: str | None = None
    #: The language the text is written in, when the language-ID model is sure of it.
    language: str | None = None
    #: Written in a language the heads were not validated on (flagged under the config's ``languages.unvalidated: flag``).
    unvalidated_language: bool | None = None
    #: With ``by_kind`` routes: the kind of input whose route decided it (a moderation input is a prompt).
    kind: str | None = None

    @model_serializer(mode="wrap")
    def _optional_fields_only_when_set(self, handler):
        # Without category heads, or a language read, the answer stays as it was: the fields are left out, not null.
        data = handler(self)
        for name in ("harm_categories", "top_category", "language", "unvalidated_language", "kind"):
            if name not in self.model_fields_set:
                data.pop(name, None)
        return data


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]
    siren: SirenDetails


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def moderation_result(result: EnsembleResult) -> ModerationResult:
    verdict = result.categories
    judged_scores = (verdict.openai_scores() if verdict else None) or {}
    judged_flags = (verdict.openai_flags(result.is_harmful) if verdict else None) or {}
    categories = {name: judged_flags.get(name, False) for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: result.is_harmful}
    scores = {name: judged_scores.get(name, 0.0) for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: result.score}
    applied = {name: ["text"] if name in judged_scores else [] for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: ["text"]}
    details = {} if verdict is None else {"harm_categories": verdict.scores,
                                          "top_category": verdict.top_category(result.is_harmful)}
    if result.language is not None:
        details |= {"language": result.language, "unvalidated_language": result.unvalidated_language}
    if result.kind is not None:
        details |= {"kind": result.kind}
    return ModerationResult(
        flagged=result.is_harmful, categories=categories, category_scores=scores, category_applied_input_types=applied,
        siren=SirenDetails(score=result.score, threshold=result.threshold, members=result.members,
                           truncated=result.truncated, errors=result.errors, decided_by=result.decided_by, **details),
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error the service answers, in OpenAI's shape (``error_body``)."""

    error: ErrorDetail


def error_body(message: str, error_type: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, so its clients raise their usual exceptions with our message."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": None}}
