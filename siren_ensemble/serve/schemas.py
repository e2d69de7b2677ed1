"""Request and response bodies: the OpenAI moderation wire format and our richer /v1/score form."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..ensemble import EnsembleResult

StrictText = Annotated[str, Strict()]
#: Strict: "0.5" and true are refused, not read as numbers.
Threshold = Annotated[float, Strict(), Field(ge=0, le=1, allow_inf_nan=False)]

#: SIREN gives one harm score and cannot tell OpenAI's categories apart. Our verdict is the
#: ``harmful`` category (and ``flagged``); the standard category keys are present, so clients that
#: read them keep working, and always answer false / 0.0: "not classified", never "safe".
HARM_CATEGORY = "harmful"
OPENAI_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)


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
    threshold: Threshold | None = None

    @model_validator(mode="after")
    def _one_form(self) -> "ScoreRequest":
        if self.text is not None and (self.prompt is not None or self.response is not None):
            raise ValueError("pass either `text` or `prompt`/`response`, not both")
        if self.text is None and self.prompt is None and self.response is None:
            raise ValueError("provide `text`, or at least one of `prompt`/`response`")
        return self


class RankRequest(BaseModel):
    """Candidate responses to one prompt, to be ranked safest first (``Ensemble.rank``)."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictText
    candidates: list[StrictText] = Field(min_length=1)
    method: Literal["auto", "siren", "srr"] = "auto"


class RankedCandidateBody(BaseModel):
    index: int
    score: float
    members: dict[str, float | None]
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
    categories = {name: False for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: result.is_harmful}
    scores = {name: 0.0 for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: result.score}
    applied = {name: [] for name in OPENAI_CATEGORIES} | {HARM_CATEGORY: ["text"]}
    return ModerationResult(
        flagged=result.is_harmful, categories=categories, category_scores=scores, category_applied_input_types=applied,
        siren=SirenDetails(score=result.score, threshold=result.threshold, members=result.members,
                           truncated=result.truncated, errors=result.errors, decided_by=result.decided_by),
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
