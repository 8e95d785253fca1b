"""``--task chat``: a terminal conversation. Rank 0 reads each line and every rank receives it, so
the job generates the reply together (any layout); earlier exchanges stay in the prompt up to
``--history-turns``, and the oldest are dropped when the prompt would not fit the model.

Commands: an empty line is ignored, ``/clear`` forgets the history, ``/exit`` (or end of input) quits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch.distributed as dist

USER_PROMPT, REPLY_PROMPT = "User: ", "Assistant: "


def _share_line(line: str | None) -> str | None:
    box = [line]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def run_chat(prepared, generator, reply_printer: Callable, read_line: Callable[[], str | None] | None = None,
             write: Callable[[str], None] | None = None) -> int:
    """The loop; returns the number of replies. ``reply_printer(ids) -> (on_tokens, finish)`` streams a reply."""
    cfg, limit = prepared.cfg, prepared.checkpoint.model_cfg.seq_length
    rank0 = dist.get_rank() == 0
    write = write or (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    read_line = read_line or (lambda: sys.stdin.readline() or None)
    history: list[tuple[str, str]] = []
    replies = 0
    if rank0:
        write("chat: type a message; /clear forgets the history, /exit quits\n")
    while True:
        line = None
        if rank0:
            write(USER_PROMPT)
            line = read_line()
        line = _share_line(None if line is None else line.rstrip("\n"))
        if line is None or line.strip() in ("/exit", "/quit", "exit", "quit"):
            return replies
        if not line.strip():
            continue
        if line.strip() == "/clear":
            history.clear()
            continue
        kept = history[-cfg.history_turns:] if cfg.history_turns else []
        ids = prepared.encode(line, kept)
        while len(ids) >= limit and kept:  # the oldest exchanges go first
            kept = kept[1:]
            ids = prepared.encode(line, kept)
        if len(ids) >= limit:
            if rank0:
                write(f"(the message is {len(ids)} tokens; the model has {limit} positions: shorten it)\n")
            continue
        if rank0:
            write(REPLY_PROMPT)
        on_tokens, finish = reply_printer()
        (result,) = generator.generate([ids], cfg.max_new_tokens, cfg.sampling, stop=prepared.stop,
                                       seed=cfg.seed + replies, on_tokens=on_tokens)
        reply = finish(result)
        history.append((line, reply))
        replies += 1
