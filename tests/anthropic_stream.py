"""A /v1/messages stream read as Anthropic's clients read it: its events, and the content blocks they build."""

from __future__ import annotations

import json
from typing import Any

DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "signature"}


def anthropic_events(streamed: str) -> list[dict[str, Any]]:
    """A stream's events (their data), each checked against its event name."""
    lines = [line for line in streamed.splitlines() if line.startswith(("event: ", "data: "))]
    names, data = lines[0::2], [json.loads(line[6:]) for line in lines[1::2]]
    assert [n[7:] for n in names] == [d["type"] for d in data], lines
    return data


def streamed_blocks(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The content blocks a client assembles from a stream's events (a tool_use block's input from its JSON
    pieces, read at the block's end)."""
    blocks: list[dict[str, Any]] = []
    pieces: dict[int, str] = {}
    for event in events:
        if event["type"] == "content_block_start":
            assert event["index"] == len(blocks), event
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "input_json_delta":
                pieces[event["index"]] = pieces.get(event["index"], "") + delta["partial_json"]
            else:
                field = DELTA_FIELDS[delta["type"]]
                blocks[event["index"]][field] += delta[field]
        elif event["type"] == "content_block_stop" and event["index"] in pieces:
            blocks[event["index"]]["input"] = json.loads(pieces[event["index"]])
    return blocks
