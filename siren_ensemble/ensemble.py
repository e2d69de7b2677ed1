"""The ensemble: members (a SIREN head on a backbone each), one combiner, one threshold.

Members whose backbone specs are equal share the loaded model; those that also share the
head's ``max_length`` share each forward pass.
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbones.base import BackboneSpec
from .category_scores import CategoryCombination, CategoryVerdict
from .config import BatchingConfig, EnsembleConfig, SlidingWindowConfig, load_config
from .conversation import Conversation, ConversationReport, check_judge
from .conversation_encoding import EncodedConversation, encode_conversation
from .decision import ENSEMBLE_ERROR_KEY, DecisionPath
from .encoding import SpecialTokenLayout, encode_windows, plan_batches
from .errors import ConfigError, InputError, MemberError, SirenError
from .extraction import LoadedBackbone, StreamSupport, union_of
from .language import LanguagePolicy
from .members import MemberPlan, plan_members, check_heads_against_backbones
from .precision import DtypeChoice
from .ranking.model import SRRRanker
from .ranking.result import RankResult, ranked
from .ranking.runtime import check_rank_request, guarded_scores, load_rankers, resolve_method, srr_risks
from .input_kinds import PromptResponse, Scorable, kind_of
from .routing import Routes
from .streaming import EnsembleStream, PassStream, ReEncodingStreamWarning
from .text import check_encodable, clean_text


#: The failure recorded for a text dropped by ``score_batch``'s ``abandoned`` (its answer goes to nobody).
ABANDONED = "not scored: abandoned by its caller"


@dataclass(frozen=True)
class EnsembleResult:
    score: float
    is_harmful: bool
    threshold: float
    #: Each member's score; ``None`` where that member failed (see ``errors``).
    members: dict[str, float | None]
    truncated: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    #: With the cascade combiner: the index (into ``combiner.stages``) of the stage that decided the text;
    #: members of later stages did not run on it (their score is ``None``, without an error).
    decided_by: int | None = None
    #: Harm categories, when members have category heads (``None``: they have none, and outputs carry no categories).
    categories: CategoryVerdict | None = None
    #: For a conversation: which turns were read (``truncated`` then says whether the judged turns were cut).
    conversation: ConversationReport | None = None
    #: The language the text is written in, when the language-ID model is sure of it (config ``languages``).
    language: str | None = None
    #: Written in a language the heads were not validated on; under ``languages.unvalidated: flag`` such a text is
    #: flagged whatever its ``score`` (the heads' own).
    unvalidated_language: bool = False
    #: The kind of input ("prompt" or "response") whose route decided it, when the config routes by kind (``by_kind``).
    kind: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["categories"]
        if self.kind is None:
            del data["kind"]
        if self.language is None:
            del data["language"]
        if not self.unvalidated_language:
            del data["unvalidated_language"]
        if not self.errors:
            del data["errors"]
        if self.decided_by is None:
            del data["decided_by"]
        if self.conversation is None:
            del data["conversation"]
        if self.categories is not None:
            data.update(self.categories.to_dict(self.is_harmful))
        return data


@dataclass(frozen=True)
class _SharedPass:
    """Members that can share one forward pass: same loaded backbone and same max_length."""

    backbone: LoadedBackbone
    max_length: int
    member_positions: tuple[int, ...]
    #: Every (pooling, layer) the members' heads read: what each forward pass must pool.
    wanted: frozenset[tuple[str, int]]
    #: Tokens between sliding windows over a long text; None: truncate to max_length.
    window_stride: int | None = None
    #: How conversations are rendered (``conversation.template``).
    template: str = "auto"

    def encode(self, cleaned: list[str]) -> list[tuple[list[list[int]], bool]]:
        """Per text, the token ids of each window to score, and whether the text was cut."""
        if self.window_stride is None:
            return [([item.ids], item.truncated) for item in self.backbone.encode(cleaned, self.max_length)]
        windows = encode_windows(self.backbone.tokenizer, cleaned, self.max_length, self.window_stride)
        return [(text_windows, False) for text_windows in windows]

    def only(self, positions: Sequence[int], plans: list[MemberPlan]) -> "_SharedPass | None":
        """The same pass scoring only the members at ``positions`` (one cascade stage's); None if it has none of them."""
        kept = tuple(position for position in self.member_positions if position in positions)
        if not kept:
            return None
        return replace(self, member_positions=kept, wanted=frozenset(union_of(plans[p].head.request for p in kept)))

    def encode_each(self, cleaned: list[str | Conversation]) -> list[tuple[list[list[int]], bool, EncodedConversation | None] | str]:
        """As ``encode`` (a conversation: its turns that fit, rendered for this backbone), but an input the
        tokenizer cannot read gets the reason in its place, not the batch's error."""
        encoded: list = [None] * len(cleaned)
        texts = [row for row, item in enumerate(cleaned) if isinstance(item, str)]
        for row, item in zip(texts, self._encode_texts([cleaned[row] for row in texts])):
            encoded[row] = item if isinstance(item, str) else (*item, None)
        for row, item in enumerate(cleaned):
            if isinstance(item, Conversation):
                try:
                    found = encode_conversation(self.backbone.tokenizer, item, self.max_length, self.template)
                    encoded[row] = ([found.ids], found.truncated, found)
                except Exception as error:
                    encoded[row] = f"tokenisation failed: {type(error).__name__}: {error}"
        return encoded

    def _encode_texts(self, cleaned: list[str]) -> list[tuple[list[list[int]], bool] | str]:
        try:
            return list(self.encode(cleaned))
        except Exception:  # find the text(s) to blame: tokenising alone gives every other text the same ids
            pass
        encoded: list[tuple[list[list[int]], bool] | str] = []
        for text in cleaned:
            try:
                encoded.append(self.encode([text])[0])
            except Exception as error:
                encoded.append(f"tokenisation failed: {type(error).__name__}: {error}")
        return encoded


@dataclass
class _MemberScores:
    scores: np.ndarray  # texts x members, NaN where a member failed
    truncated: np.ndarray
    errors: list[dict[str, str]]
    #: Per text, why it could not be scored at all (cleaning failed), else None.
    rejected: list[str | None]
    #: texts x members x categories (``CategoryCombination``), NaN where unscored; None without category heads.
    categories: np.ndarray | None = None
    #: Per conversation (by row): the input, and per pass that encoded it, its members and what they read.
    conversations: dict[int, Conversation] = field(default_factory=dict)
    encoded_conversations: dict[int, list[tuple[tuple[str, ...], EncodedConversation]]] = field(default_factory=dict)


class Ensemble:
    def __init__(self, config: EnsembleConfig, plans: list[MemberPlan], backbones: dict[BackboneSpec, LoadedBackbone],
                 routes: Routes | None = None):
        self.config = config
        self.plans = plans
        self.member_names = [plan.name for plan in plans]
        #: Per kind of input, member scores -> member calibration -> combiner -> calibration -> threshold -> failure
        #: policy (``by_kind``; one path for every kind without it).
        self._passes = _group_passes(plans, backbones, config.sliding_window, config.conversation.template)
        self.routes = routes or Routes.from_config(config, plans)
        self._lock = threading.Lock()
        #: What happens to text in a language the heads were not validated on.
        self.languages = LanguagePolicy.from_config(config.languages)
        #: Members whose streams re-encode every chunk and have said so (once each).
        self._warned_re_encoding: set[str] = set()
        #: The members' SRR rankers, loaded on the first ``rank`` call.
        self._rankers: dict[str, SRRRanker] | None = None
        for plan in plans:
            plan.head.to(backbones[plan.spec].input_device)
            if plan.categories is not None:
                plan.categories.to(backbones[plan.spec].input_device)
        #: How member category scores combine; None when no member has a category head.
        self.category_combination = CategoryCombination.for_members(config, plans)

    @property
    def routes(self) -> Routes:
        return self._routes

    @routes.setter
    def routes(self, routes: Routes) -> None:
        self._routes = routes
        #: Per route (``routes.paths``), per cascade stage, (index into ``_passes``, that pass scoring only the stage's
        #: members); one stage holding every pass for the other combiners. Members sharing a pass but not a stage each
        #: pay its forward.
        self._stage_passes = [
            [[(index, view) for index, shared in enumerate(self._passes) if (view := shared.only(stage.runs, self.plans)) is not None]
             for stage in path.stages]
            for path in routes.paths
        ]

    @property
    def decision(self) -> DecisionPath:
        """The top-level path: every kind's without ``by_kind``."""
        return self.routes.default

    @decision.setter
    def decision(self, path: DecisionPath) -> None:
        self.routes = replace(self.routes, default=path)

    @property
    def threshold(self) -> float:
        """The decision threshold: the config's, else the one its combiner implies, else the default (a kind with a
        ``by_kind`` route of its own has its own: ``threshold_for``)."""
        return self.decision.threshold

    def threshold_for(self, kind: str) -> float:
        """The threshold that decides inputs of ``kind`` ("prompt" or "response")."""
        return self.routes.path(kind).threshold

    @property
    def precision(self) -> dict[str, DtypeChoice]:
        """Per member: the dtype its backbone computes in, what the config asked for, and why."""
        return {plan.name: plan.precision for plan in self.plans}

    @classmethod
    def from_config(cls, config: str | Path | EnsembleConfig) -> "Ensemble":
        if not isinstance(config, EnsembleConfig):
            config = load_config(config)
        plans = plan_members(config)
        check_heads_against_backbones(plans)
        routes = Routes.from_config(config, plans)  # a bad combiner stops here, before weights load
        backbones: dict[BackboneSpec, LoadedBackbone] = {}
        for plan in plans:
            try:
                if plan.spec not in backbones:
                    backbones[plan.spec] = LoadedBackbone.load(plan.adapter, plan.backbone_weights)
                backbones[plan.spec].check_readable(plan.head)
            except SirenError as error:
                raise type(error)(f"{plan.where}: {error}") from None
        return cls(config, plans, backbones, routes)

    # ---- public API (mirrors llm-siren's SirenGuard) -------------------------------------

    def score(self, text: str | None = None, *, prompt: str | None = None, response: str | None = None,
              threshold: float | None = None) -> EnsembleResult:
        if text is not None and (prompt is not None or response is not None):
            raise InputError("pass either `text` or `prompt`/`response`, not both")
        if text is None:
            if prompt is None and response is None:
                raise InputError("provide `text`, or at least one of `prompt`/`response`")
            _check_string("prompt", prompt)
            _check_string("response", response)
            return self.score_batch([PromptResponse(prompt, response)], threshold=threshold)[0]
        return self.score_batch([text], threshold=threshold)[0]

    def score_batch(self, texts: Sequence[Scorable], threshold: float | None = None, progress: bool = False,
                    abandoned: Callable[[int], bool] | None = None) -> list[EnsembleResult]:
        """One result per text, ``PromptResponse`` (a prompt and its answer) or ``Conversation`` (see
        ``conversation_input``), each decided by its kind's route (``by_kind``): a plain text is a prompt.
        ``threshold`` overrides every route's. ``abandoned(row)``, asked before each forward pass (from the thread
        that runs it), drops texts nobody waits for any more: they are not scored and answer as failed."""
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise InputError(f"texts: expected a list of strings, got {type(texts).__name__}")
        for index, text in enumerate(texts):
            if isinstance(text, Conversation):
                if text.judge is not None:
                    check_judge(text.judge, f"texts[{index}].judge")
            elif not isinstance(text, PromptResponse):
                _check_string(f"texts[{index}]", text, allow_none=False)
        threshold = self._resolve_threshold(threshold)
        if not texts:
            return []
        kinds = [kind_of(text) for text in texts]
        inputs = [text.text if isinstance(text, PromptResponse) else text for text in texts]
        views = _JudgedViews.of(inputs, self.config.conversation.judge)
        results = self._score_routed(views.texts, [kinds[views.origin(row)] for row in range(len(views.texts))],
                                     threshold, progress,
                                     None if abandoned is None else lambda row: abandoned(views.origin(row)), views.label)
        return self._judge_languages([text.last_turns_text() if isinstance(text, Conversation) else text for text in inputs],
                                     views.merge(results))

    def _score_routed(self, texts: list[str | Conversation], kinds: list[str], threshold: float | None, progress: bool,
                      abandoned: Callable[[int], bool] | None, label: Callable[[int], str]) -> list[EnsembleResult]:
        """Each route's texts scored through its own stages and decided by it; the results in ``texts`` order."""
        results: list[EnsembleResult | None] = [None] * len(texts)
        for route, rows in self.routes.groups(kinds):
            state = self._member_scores([texts[row] for row in rows], progress, route,
                                        None if abandoned is None else lambda index: abandoned(rows[index]))
            decided = self._combine(state, threshold, lambda index: label(rows[index]), route)
            for row, result in zip(rows, decided):
                results[row] = replace(result, kind=kinds[row]) if self.routes.routed else result
        return results

    def conversation_input(self, messages: Sequence[dict] | Conversation, window: int | None = None,
                           judge: str | None = None) -> Conversation:
        """Chat messages (``[{"role", "content"}, ...]``) parsed, with at most ``window`` turns of context before the
        judged ones (default: the config's ``conversation.window``), to be judged ``judge`` ("either", "context" or
        "last_turns"; default: the config's ``conversation.judge``)."""
        conversation = messages if isinstance(messages, Conversation) else Conversation.parse(messages)
        if judge is not None:
            conversation = conversation.judged_as(judge)
        return conversation.windowed(self.config.conversation.window if window is None else window)

    def score_conversation(self, messages: Sequence[dict] | Conversation, threshold: float | None = None,
                           window: int | None = None, judge: str | None = None) -> EnsembleResult:
        """Judge the last user turn and its answer (when there is one). ``judge`` (default: ``conversation.judge``):
        "either" scores them in the context of the turns before and alone (as ``score`` reads a prompt/response
        pair) in one batch and answers with the higher score, flagged when either view is; "context" or
        "last_turns" score one view. ``result.conversation`` says which view decided and both scores."""
        return self.score_batch([self.conversation_input(messages, window, judge)], threshold=threshold)[0]

    def unscorable(self, reasons: Sequence[str], threshold: float | None = None) -> list[EnsembleResult]:
        """Results for inputs that hold no text to score (a malformed row of a corpus), one per reason: each
        failed at every member with its reason and decided by the failure policy, as a text rejected by
        cleaning is (flagged under ``fail_closed``; the ``raise`` policy raises)."""
        threshold = self._resolve_threshold(threshold)
        return self._combine(self._unscored(list(reasons)), threshold) if reasons else []

    def unjudged_categories(self) -> CategoryVerdict | None:
        """What a result answered without scoring (the service's failure policy) says about categories."""
        if self.category_combination is None:
            return None
        return CategoryVerdict(None, self.category_combination.thresholds)

    def score_streaming(self, prefix: str, threshold: float | None = None) -> EnsembleResult:
        """Score the response generated so far (re-encodes the whole prefix, as llm-siren does).

        ``stream()`` scores a growing response paying only for each chunk's new tokens.
        """
        _check_string("prefix", prefix, allow_none=False)
        return self.score_batch([PromptResponse(None, prefix) if prefix else prefix], threshold=threshold)[0]

    def stream(self, prompt: str | None = None, threshold: float | None = None) -> EnsembleStream:
        """A stream whose ``feed(chunk)`` scores ``score(prompt=prompt, response=<chunks so far>)``, on the response
        route."""
        _check_string("prompt", prompt)
        threshold = self.threshold_for("response") if threshold is None else self._resolve_threshold(threshold)
        with self._lock:  # the first stream probes each backbone: no other pass's hooks may be in place
            stream = EnsembleStream(self, prompt, threshold)
            self._warn_re_encoding(stream.support)
        return stream

    def stream_support(self) -> dict[str, StreamSupport]:
        """Per member: whether its streams reuse the KV cache, and why not where they re-encode (probes each backbone once)."""
        with self._lock:
            return {name: shared.backbone.stream_support for shared in self._passes for name in self._names(shared)}

    def _warn_re_encoding(self, support: dict[str, StreamSupport]) -> None:
        """Say once per member, at its first stream, that its streams re-encode every chunk (a full pass each)."""
        for name, member in support.items():
            if not member.incremental and name not in self._warned_re_encoding:
                self._warned_re_encoding.add(name)
                warnings.warn(f"member {name!r} cannot stream incrementally, so every chunk re-encodes the whole text: "
                              f"{member.reason}", ReEncodingStreamWarning, stacklevel=3)

    __call__ = score

    def rank(self, prompt: str, candidates: Sequence[str], method: str = "auto") -> RankResult:
        """``candidates`` (responses to ``prompt``) safest first. ``siren``: by the ensemble score of each
        (prompt, candidate) pair; ``srr``: by the SRR rankers beside the members' heads (mean of their risks);
        ``guarded``: by ``srr``, after every candidate the ensemble passes those it flags (a pair it fails to score
        is flagged under the default ``fail_closed`` policy);
        ``auto``: ``guarded`` when a member has a ranker, else ``siren``."""
        check_rank_request(prompt, candidates, method)
        if self._rankers is None and method != "siren":  # "siren" ranks even beside a ranker that would not load
            self._rankers = load_rankers(self.plans, self._backbone_by_member())
        method = resolve_method(method, self._rankers or {})
        if method in ("siren", "guarded"):
            results = self.score_batch([PromptResponse(prompt, candidate) for candidate in candidates])
            if method == "siren":
                return ranked(method, [r.score for r in results], [r.members for r in results], [r.errors for r in results])
        backbones = self._backbone_by_member()
        with self._lock:
            risks = {name: srr_risks(ranker, backbones[name], prompt, candidates, self.config.batching)
                     for name, ranker in self._rankers.items()}
        members = [{name: float(values[row]) for name, values in risks.items()} for row in range(len(candidates))]
        mean_risks = np.mean(list(risks.values()), axis=0)
        if method == "srr":
            return ranked(method, mean_risks.tolist(), members)
        flagged = [bool(r.is_harmful) for r in results]
        return ranked(method, guarded_scores(mean_risks, flagged).tolist(), members, [r.errors for r in results], flagged)

    # ---- internals -----------------------------------------------------------------------

    def _backbone_by_member(self) -> dict[str, LoadedBackbone]:
        return {self.member_names[position]: shared.backbone for shared in self._passes for position in shared.member_positions}

    def _resolve_threshold(self, threshold: float | None) -> float | None:
        """A caller's threshold, checked; None (each route's own) stays None."""
        if threshold is None:
            return None
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold: expected a number between 0 and 1, got {threshold!r}")
        return float(threshold)

    def _member_scores(self, texts: list[str | Conversation], progress: bool, route: int = 0,
                       abandoned: Callable[[int], bool] | None = None) -> _MemberScores:
        """Member scores, stage by stage of ``routes.paths[route]``: a stage's members run only on the texts earlier
        stages left undecided."""
        cleaned, state, live = self._start(texts)
        with tqdm(total=0, desc="scoring", unit="batch", disable=not progress, leave=False) as bar:
            for stage, passes in enumerate(self._stage_passes[route]):
                live = self._undecided(stage, live, state, route)
                if not live:
                    break
                if abandoned is not None:  # not even tokenised
                    gone = {row for row in live if abandoned(row)}
                    _record_failure(state.errors, sorted(gone), self.member_names, ABANDONED)
                    live = [row for row in live if row not in gone]
                    if not live:
                        break
                work = self._plan_work([shared for _, shared in passes], cleaned, live, state)
                bar.total += len(work)
                bar.refresh()
                self._run_work(work, state, bar, abandoned)
        return state

    def _start(self, texts: list[str]) -> tuple[list[str | None], _MemberScores, list[int]]:
        """The cleaned texts, empty member scores (a text that failed cleaning recorded as failed for every
        member), and the rows left to score."""
        cleaned, rejected = _clean_each(texts)
        state = self._unscored(rejected)
        state.conversations = {row: text for row, text in enumerate(texts) if isinstance(text, Conversation)}
        return cleaned, state, [row for row, text in enumerate(cleaned) if text is not None]

    def _unscored(self, rejected: list[str | None]) -> _MemberScores:
        """Member scores before any pass: a row with a reason is recorded as failed for every member."""
        state = _MemberScores(np.full((len(rejected), len(self.plans)), np.nan), np.zeros(len(rejected), dtype=bool),
                              [{} for _ in rejected], rejected,
                              self.category_combination.empty(len(rejected)) if self.category_combination else None)
        for row, reason in enumerate(rejected):
            if reason is not None:
                _record_failure(state.errors, [row], self.member_names, reason)
        return state

    def _undecided(self, stage: int, live: list[int], state: _MemberScores, route: int) -> list[int]:
        """The ``live`` rows the route's decision path leaves undecided after the stages before ``stage``."""
        if not stage:
            return live
        path = self.routes.paths[route]
        going_on = path.decide(state.scores, self._failed_members(state.errors), through=stage).pending
        return [row for row in live if going_on[row]]

    def _encoded(self, shared: _SharedPass, cleaned: list[str | None], live: list[int],
                 state: _MemberScores) -> Iterator[tuple[int, list[list[int]]]]:
        """(row, token windows) of each ``live`` text ``shared`` encodes; failures and truncation recorded."""
        for row, encoded in zip(live, shared.encode_each([cleaned[row] for row in live])):
            if isinstance(encoded, str):
                _record_failure(state.errors, [row], self._names(shared), encoded)
                continue
            windows, cut, conversation = encoded
            state.truncated[row] |= cut
            if conversation is not None:
                state.encoded_conversations.setdefault(row, []).append((tuple(self._names(shared)), conversation))
            yield row, windows

    def _plan_work(self, passes: list[_SharedPass], cleaned: list[str | None], live: list[int],
                   state: _MemberScores) -> list[tuple[_SharedPass, list[int], list[list[int]]]]:
        """Batches of (pass, row of each sequence, token ids) for the ``live`` texts."""
        work = []
        for shared in passes:
            # One row per window; a text that fits (or is truncated) is a single window.
            rows, sequences = [], []
            for row, windows in self._encoded(shared, cleaned, live, state):
                rows += [row] * len(windows)
                sequences += windows
            for batch in _plan(self.config.batching, [len(ids) for ids in sequences]):
                work.append((shared, [rows[i] for i in batch], [sequences[i] for i in batch]))
        return work

    def _run_work(self, work, state: _MemberScores, bar, abandoned: Callable[[int], bool] | None = None) -> None:
        with self._lock:
            def run_all(device_work):
                for shared, batch, sequences in device_work:
                    if abandoned is not None:
                        batch, sequences = self._drop_abandoned(shared, batch, sequences, abandoned, state.errors)
                    if batch:
                        self._run_pass(shared, batch, sequences, state)  # each member writes its own column
                    bar.update()

            by_device: dict[str, list] = {}
            for item in work:
                by_device.setdefault(_device_key(item[0]), []).append(item)
            if len(by_device) <= 1:
                run_all(work)
            else:  # members on different devices run side by side, one thread per device
                with ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="siren-device") as pool:
                    for future in [pool.submit(run_all, device_work) for device_work in by_device.values()]:
                        future.result()

    def _drop_abandoned(self, shared: _SharedPass, batch: list[int], sequences, abandoned: Callable[[int], bool],
                        errors: list[dict[str, str]]):
        """The pass's rows (and their sequences) still waited for; the others are recorded as not scored."""
        gone = {row for row in set(batch) if abandoned(row)}
        if not gone:
            return batch, sequences
        _record_failure(errors, sorted(gone), self._names(shared), ABANDONED)
        kept = [index for index, row in enumerate(batch) if row not in gone]
        return [batch[index] for index in kept], [sequences[index] for index in kept]

    def _failed_members(self, errors: list[dict[str, str]]) -> np.ndarray:
        """Texts x members: which member failed on which text (from the errors recorded so far)."""
        failed = np.zeros((len(errors), len(self.member_names)), dtype=bool)
        for row, row_errors in enumerate(errors):
            for column, name in enumerate(self.member_names):
                failed[row, column] = name in row_errors
            if row_errors and not failed[row].any():  # a failure that names no member fails the whole text
                failed[row] = True
        return failed

    def decided_at(self, result: EnsembleResult, threshold: float) -> EnsembleResult:
        """``result`` decided at another threshold (the service's per-request override of a batch scored at the
        config's): its score against ``threshold``, and the language rule as before."""
        return replace(result, threshold=threshold, is_harmful=result.score >= threshold or self._flagged_by_language(result))

    def _flagged_by_language(self, result: EnsembleResult) -> bool:
        return result.unvalidated_language and self.languages.flag_unvalidated

    def _judge_languages(self, texts: list[str], results: list[EnsembleResult]) -> list[EnsembleResult]:
        """Each result with the language of its text; one in a language the heads were not validated on is flagged
        under ``languages.unvalidated: flag``."""
        judged = [replace(result, language=reading.language, unvalidated_language=reading.unvalidated)
                  for result, reading in zip(results, self.languages.read(texts))]
        return [replace(result, is_harmful=result.is_harmful or self._flagged_by_language(result)) for result in judged]

    def _names(self, shared: _SharedPass) -> list[str]:
        return [self.member_names[position] for position in shared.member_positions]

    def _score_stream(self, texts: list[str], streams: list[PassStream], threshold: float) -> list[EnsembleResult]:
        """Score a stream's text after each of its new chunks (``texts``, each extending the one before),
        stage by stage of the response route like ``score_batch``."""
        route = self.routes.index("response")
        cleaned, state, live = self._start(texts)
        with self._lock:
            for stage, passes in enumerate(self._stage_passes[route]):
                # A pass whose members wait for a later stage keeps its cache; it catches up when next needed.
                live = self._undecided(stage, live, state, route)
                if not live:
                    break
                for index, shared in passes:
                    self._stream_pass(streams[index], shared, cleaned, live, state)
        kind = "response" if self.routes.routed else None
        return self._judge_languages(texts, self._combine(state, threshold, route=route, kind=kind))

    def _stream_pass(self, stream: PassStream, shared: _SharedPass, cleaned: list[str | None], live: list[int],
                     state: _MemberScores) -> None:
        """Score ``shared``'s members on the stream's texts ``live`` through the stream's cached pass."""
        rows, sequences = [], []  # advanced incrementally
        afresh_rows, afresh = [], []  # scored as score_batch scores them: encoders, and sliding windows
        for row, windows in self._encoded(shared, cleaned, live, state):
            if len(windows) > 1 or not stream.incremental:
                afresh_rows += [row] * len(windows)
                afresh += windows
            else:
                rows.append(row)
                sequences.append(windows[0])
        for batch in _plan(self.config.batching, [len(ids) for ids in afresh]):
            self._run_pass(shared, [afresh_rows[i] for i in batch], [afresh[i] for i in batch], state)
        if not rows:
            return
        try:
            pooled = stream.pooled(sequences)
        except Exception as error:  # fail closed; the next feed starts this pass over
            stream.reset()
            self._record_forward_failure(shared, rows, error, state.errors)
            return
        self._score_heads(shared, rows, pooled, state)

    def _run_pass(self, shared: _SharedPass, batch: list[int], sequences, state: _MemberScores) -> None:
        try:
            pooled = shared.backbone.pooled_states(sequences, shared.wanted)
        except Exception as error:  # fail closed on anything the forward pass raises
            self._record_forward_failure(shared, batch, error, state.errors)
            return
        self._score_heads(shared, batch, pooled, state)

    def _record_forward_failure(self, shared: _SharedPass, batch: list[int], error: Exception, errors) -> None:
        _record_failure(errors, batch, self._names(shared), f"forward pass failed: {type(error).__name__}: {error}")

    def _score_heads(self, shared: _SharedPass, batch: list[int], pooled, state: _MemberScores) -> None:
        scores, errors = state.scores, state.errors
        members = [self.plans[position] for position in shared.member_positions]
        for position, plan in zip(shared.member_positions, members):
            try:
                request = plan.head.request
                read = {layer: pooled[(request.pooling, layer)] for layer in request.layers}
                values = plan.head(read).detach().cpu().double().numpy()
                categories = None
                if plan.categories is not None:  # the features again: an index_select, nothing next to the forward pass
                    with torch.inference_mode():
                        categories = plan.categories(plan.head.features(read)).cpu().double().numpy()
            except Exception as error:
                _record_failure(errors, batch, [plan.name], f"head failed: {type(error).__name__}: {error}")
                continue
            if categories is not None:
                self.category_combination.record(state.categories, batch, position, categories)
            for row, value in zip(batch, values):
                if math.isfinite(value):
                    # A text scored by several windows keeps its highest window's score.
                    scores[row, position] = np.fmax(scores[row, position], value)
                else:
                    errors[row][plan.name] = f"non-finite score ({value})"

    def _combine(self, member_scores: _MemberScores, threshold: float | None, label: Callable[[int], str] = str,
                 route: int = 0, kind: str | None = None) -> list[EnsembleResult]:
        """One result per scored row, decided by ``routes.paths[route]`` (at its own threshold when ``threshold`` is
        None); ``label(row)`` names a row in a ``raise``d error (the caller's text); ``kind`` goes into each result."""
        path = self.routes.paths[route]
        threshold = path.threshold if threshold is None else threshold
        scores, errors = member_scores.scores, member_scores.errors
        raises = self.config.on_member_error == "raise"
        if raises:
            _raise_first_failure(errors, member_scores.rejected, label)
        decisions = path.decide(scores, self._failed_members(errors), threshold)
        errors = [{**row_errors, **found} for row_errors, found in zip(errors, decisions.errors)]
        categories = self.category_combination.verdicts(member_scores.categories, decisions.failed) \
            if self.category_combination else [None] * len(scores)
        if raises:
            _raise_first_failure(errors, member_scores.rejected, label)
        results = []
        for row in range(len(scores)):
            members = {
                name: (None if math.isnan(scores[row, column]) else float(scores[row, column]))
                for column, name in enumerate(self.member_names)
            }
            results.append(EnsembleResult(
                score=float(decisions.scores[row]), is_harmful=bool(decisions.is_harmful[row]), threshold=threshold,
                members=members, truncated=bool(member_scores.truncated[row]), errors=errors[row],
                decided_by=int(decisions.decided_by[row]) if path.staged else None, categories=categories[row],
                conversation=_conversation_report(member_scores, row), kind=kind,
            ))
        return results


#: A view of a conversation (``judged_by``) as named in the errors it adds when it did not decide.
_VIEW_NAMES = {"context": "in context", "last_turns": "last turns alone"}


@dataclass(frozen=True)
class _JudgedViews:
    """What ``score_batch`` scores for its inputs: a text as it is; a conversation in context (``judge``
    "context"), its last user turn and answer alone as ``score`` reads a prompt/response pair ("last_turns"),
    or both ("either"). Both views go to the same batch: the last turns are appended after the inputs, so
    each input keeps its row and costs one more text, not another pass over the batch."""

    inputs: list[str | Conversation]
    #: What is scored: the inputs (a "last_turns" conversation replaced by its text), then the appended last turns.
    texts: list[str | Conversation]
    #: Per conversation (by input row): how it is judged.
    judges: dict[int, str]
    #: Per "either" conversation (by input row): the row of its last turns in ``texts``.
    last_turns: dict[int, int]

    @functools.cached_property
    def appended_from(self) -> dict[int, int]:
        """The other way: per appended row of ``texts``, its input row."""
        return {appended: row for row, appended in self.last_turns.items()}

    @classmethod
    def of(cls, inputs: list[str | Conversation], default: str) -> "_JudgedViews":
        texts: list[str | Conversation] = list(inputs)
        judges: dict[int, str] = {}
        last_turns: dict[int, int] = {}
        for row, item in enumerate(inputs):
            if not isinstance(item, Conversation):
                continue
            judges[row] = judge = item.judge or default
            if judge == "last_turns":
                texts[row] = item.last_turns_text()
            elif judge == "either":
                last_turns[row] = len(texts)
                texts.append(item.last_turns_text())
        return cls(inputs, texts, judges, last_turns)

    def origin(self, row: int) -> int:
        """The input row a scored row answers."""
        return self.appended_from.get(row, row)

    def label(self, row: int) -> str:
        return f"{self.appended_from[row]} (its last turns alone)" if row in self.appended_from else str(row)

    def merge(self, results: list[EnsembleResult]) -> list[EnsembleResult]:
        """One result per input: a conversation's from the view it was judged by, its report saying which."""
        merged = []
        for row, item in enumerate(self.inputs):
            result, judge = results[row], self.judges.get(row)
            if judge is None:
                merged.append(result)
            elif judge == "context":
                merged.append(replace(result, conversation=replace(
                    result.conversation, judge=judge, judged_by="context", context_score=result.score)))
            elif judge == "last_turns":
                merged.append(replace(result, conversation=ConversationReport(
                    turns=item.turns, judged_turns=len(item.judged), context_turns=0,
                    dropped_turns=item.turns - len(item.judged), rendering={}, judge=judge,
                    judged_by="last_turns", last_turns_score=result.score)))
            else:
                merged.append(_either(result, results[self.last_turns[row]]))
        return merged


def _either(context: EnsembleResult, alone: EnsembleResult) -> EnsembleResult:
    """The view that flags, else the higher score (a failed view first on a tie: fail_closed scored it 1.0), else
    in context. Its members, categories, truncation and stage stand; the other view's failures are kept too."""
    by_alone = (alone.is_harmful, alone.score, bool(alone.errors)) > (context.is_harmful, context.score, bool(context.errors))
    deciding, other, judged_by = (alone, context, "last_turns") if by_alone else (context, alone, "context")
    other_name = _VIEW_NAMES["context" if by_alone else "last_turns"]
    errors = dict(deciding.errors)
    for name, message in other.errors.items():
        errors.setdefault(name, f"{other_name}: {message}")
    report = replace(context.conversation, judge="either", judged_by=judged_by,
                     context_score=context.score, last_turns_score=alone.score)
    return replace(deciding, errors=errors, conversation=report)


def _conversation_report(state: _MemberScores, row: int) -> ConversationReport | None:
    conversation = state.conversations.get(row)
    if conversation is None:
        return None
    encoded = state.encoded_conversations.get(row, [])
    read = min((found.context_turns for _, found in encoded), default=0)
    return ConversationReport(
        turns=conversation.turns, judged_turns=len(conversation.judged), context_turns=read,
        dropped_turns=conversation.turns - len(conversation.judged) - read,
        rendering={name: found.rendering for names, found in encoded for name in names},
    )


def _group_passes(plans: list[MemberPlan], backbones: dict[BackboneSpec, LoadedBackbone],
                  sliding_window: SlidingWindowConfig | None, template: str = "auto") -> list[_SharedPass]:
    groups: dict[tuple[BackboneSpec, int], list[int]] = {}
    for position, plan in enumerate(plans):
        groups.setdefault((plan.spec, plan.head.max_length), []).append(position)
    return [
        _SharedPass(
            backbones[spec], max_length, tuple(positions), frozenset(union_of(plans[p].head.request for p in positions)),
            _window_stride(sliding_window, backbones[spec], max_length, plans[positions[0]]), template,
        )
        for (spec, max_length), positions in groups.items()
    ]


def _window_stride(sliding_window: SlidingWindowConfig | None, backbone: LoadedBackbone, max_length: int,
                   plan: MemberPlan) -> int | None:
    if sliding_window is None:
        return None
    try:
        layout = SpecialTokenLayout.of(backbone.tokenizer)
    except ValueError as error:
        raise ConfigError(f"sliding_window: cannot cut windows for {plan.where} ({plan.name!r}): {error}") from None
    window = max_length - layout.total
    if window < 1:
        raise ConfigError(
            f"sliding_window: {plan.where} ({plan.name!r}): its head's max_length {max_length} leaves no room "
            f"for text beside {layout.total} special tokens"
        )
    stride = sliding_window.stride or max(window // 2, 1)
    if stride > window:
        raise ConfigError(
            f"sliding_window.stride: {stride} would skip tokens between windows of {plan.where} ({plan.name!r}), "
            f"which hold {window} text tokens (head max_length {max_length} minus {layout.total} special); "
            f"use a stride of at most {window}"
        )
    return stride


def _plan(batching: BatchingConfig, lengths: list[int]) -> list[list[int]]:
    return plan_batches(lengths, batching.max_tokens, batching.max_texts, batching.max_padding)


def _device_key(shared: _SharedPass) -> str:
    """Passes with the same key share a device and run one after another."""
    return str(shared.backbone.input_device)


def _record_failure(errors: list[dict[str, str]], batch: list[int], members: Sequence[str], message: str) -> None:
    # An error message may quote the text; a lone surrogate in it could not be written out as JSON.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    for row in batch:
        for member in members:
            errors[row][member] = message


def _raise_first_failure(errors: list[dict[str, str]], rejected: list[str | None],
                         label: Callable[[int], str] = str) -> None:
    """The ``raise`` policy: the first failed text's first failure, naming the text (``label(row)``)."""
    for row, row_errors in enumerate(errors):
        if ABANDONED in row_errors.values():
            continue  # its answer goes to nobody: it must not fail the texts still waited for
        if rejected[row] is not None:
            raise InputError(f"texts[{label(row)}]: {rejected[row]}")
        for name, message in row_errors.items():
            who = "the ensemble score" if name == ENSEMBLE_ERROR_KEY else f"member {name!r}"
            raise MemberError(f"{who} failed on text {label(row)}: {message}")


def _clean_each(texts: Sequence[str | Conversation]) -> tuple[list[str | Conversation | None], list[str | None]]:
    """Each text (each conversation turn) cleaned, or None with the reason it cannot be scored; one bad text never
    fails the others. A turn's chat markers go too: a user cannot forge a turn of the template by typing it."""
    cleaned: list[str | Conversation | None] = []
    rejected: list[str | None] = []
    for text in texts:
        try:
            if isinstance(text, Conversation):
                for index, message in enumerate(text.messages):
                    try:
                        check_encodable(message.content)
                    except ValueError as error:
                        raise ValueError(f"turn {index}: {error}") from None
                cleaned.append(text.with_contents([clean_text(message.content) for message in text.messages]))
            else:
                check_encodable(text)
                cleaned.append(clean_text(text))
            rejected.append(None)
        except Exception as error:
            cleaned.append(None)
            rejected.append(f"text rejected: {error}" if isinstance(error, ValueError) else
                            f"text rejected: {type(error).__name__}: {error}")
    return cleaned, rejected


def _check_string(what: str, value, allow_none: bool = True) -> None:
    if not isinstance(value, str) and not (allow_none and value is None):
        raise InputError(f"{what}: expected a string, got {type(value).__name__}")
