"""Open-domain chat (chitchat-dataset 0.9.0) and Q&A (chatterbot-corpus 1.3.3: English, and Hindi, Tamil, Telugu):
benign."""

from __future__ import annotations

from typing import Iterator

from ..packages import data_file
from ..records import SafetyRecord
from .files import read_json, read_yaml
from .registry import source

CHITCHAT_MIN_CHARS = 25  # shorter turns ("lol", "hi there") teach nothing about harm
CHITCHAT_TURNS_PER_CONVERSATION = 2


@source("chitchat", "chitchat-dataset", "benign",
        f"turns of open-domain chats (>= {CHITCHAT_MIN_CHARS} characters, "
        f"{CHITCHAT_TURNS_PER_CONVERSATION} per conversation, one group per conversation)", requests=False)
def chitchat() -> Iterator[SafetyRecord]:
    conversations = read_json(data_file("chitchat-dataset", "dataset.json"))
    for conversation_id in sorted(conversations):
        kept = 0
        for turn in conversations[conversation_id]["messages"]:
            text = " ".join(message["text"] for message in turn).strip()
            if len(text) >= CHITCHAT_MIN_CHARS:
                yield SafetyRecord(label=0, source="chitchat", text=text, group=f"chitchat:{conversation_id}")
                kept += 1
                if kept == CHITCHAT_TURNS_PER_CONVERSATION:
                    break


@source("chatterbot", "chatterbot-corpus", "benign",
        "English chatterbot corpus: questions (prompt level) and question/answer pairs (response level)")
def chatterbot() -> Iterator[SafetyRecord]:
    yield from _chatterbot("english", "chatterbot", None)


#: chatterbot-corpus folder -> language code, for the languages of india_safety.
INDIC_FOLDERS = {"hindi": "hi", "tamil": "ta", "telugu": "te"}


@source("chatterbot_indic", "chatterbot-corpus", "benign",
        "chatterbot corpus in Hindi, Tamil and Telugu (greetings, small talk, health): questions and question/answer "
        "pairs; off by default", default=False, requests=False)
def chatterbot_indic() -> Iterator[SafetyRecord]:
    for folder, language in INDIC_FOLDERS.items():
        yield from _chatterbot(folder, "chatterbot_indic", language)


def _chatterbot(folder_name: str, name: str, language: str | None) -> Iterator[SafetyRecord]:
    folder = data_file("chatterbot-corpus", f"data/{folder_name}")
    for path in sorted(folder.glob("*.yml")):
        for conversation in read_yaml(path).get("conversations") or []:
            texts = [str(turn).strip() for turn in conversation if str(turn).strip()]
            if not texts:
                continue
            group = f"{name}:{path.stem}:{texts[0].casefold()}"
            yield SafetyRecord(label=0, source=name, text=texts[0], group=group, language=language)
            if len(texts) > 1:
                yield SafetyRecord(label=0, source=name, level="response", prompt=texts[0], response=texts[1],
                                   group=group, language=language)
