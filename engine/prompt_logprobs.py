"""Prompt logprobs (vLLM's `prompt_logprobs`): how likely the model found each prompt token,
read from the hidden states of the prefill's own forward pass.

Position p's logits predict token p + 1, so a chunk that computes positions [s, e) of a
prompt of P tokens yields the logprobs of tokens s + 1 .. min(e, P - 1); token 0 has none
(its entry is None). Only the requests that ask pay for this: their prompt rows go through
the LM head, nobody else's. A chunked prefill gives each chunk's part as it is computed,
so the result is the same as one unchunked step. A preempted request recomputes its
prompt, but the positions it already has are not computed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Request
from engine.scheduler import SchedulerOutput

# Rows of [rows, vocab] float32 logits made at once: bounds the memory of a long prompt.
_ELEMENTS_PER_PASS = 1 << 24


@dataclass(slots=True)
class PromptRows:
    """One request's prompt positions computed in this step that still need logprobs."""

    request: Request
    first_row: int  # its first row in the step's flattened batch
    first_position: int  # prompt position of that row (it predicts token first_position + 1)
    num_rows: int

    @property
    def targets(self) -> list[int]:
        """The prompt tokens these rows predict."""
        start = self.first_position + 1
        return self.request.prompt_token_ids[start : start + self.num_rows]


@dataclass(slots=True)
class PromptLogprobs:
    """Logprobs of consecutive prompt tokens of one request: one {token id: logprob} per
    token (the top-N and the token itself), and the token's rank in the vocabulary (1 = the
    likeliest)."""

    entries: list[dict[int, float]]
    ranks: list[int]


def select_prompt_rows(sched: SchedulerOutput) -> list[PromptRows]:
    """The batch rows whose logprobs a request asked for (empty: nobody asked, nothing to do)."""
    if not any(s.request.computes_prompt_logprobs for s in sched.scheduled):
        return []
    selected, row = [], 0
    for item in sched.scheduled:
        request = item.request
        if request.computes_prompt_logprobs:
            # Entries 0 .. done-1 exist; position done-1 predicts the next one wanted.
            done = len(request.prompt_logprobs)
            first = max(item.start, done - 1)
            end = min(item.start + item.num_new_tokens, request.num_prompt_tokens - 1)
            if end > first:
                selected.append(PromptRows(request, row + first - item.start, first, end - first))
        row += item.num_new_tokens
    return selected


def compute_prompt_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, selected: list[PromptRows], vocab_size: int
) -> dict[str, PromptLogprobs]:
    """Logits and log_softmax of the selected rows of `hidden` (the step's hidden states),
    by request id. The model's raw distribution, as vLLM reports it."""
    if not selected:
        return {}
    device = hidden.device
    rows = torch.cat([torch.arange(s.first_row, s.first_row + s.num_rows) for s in selected])
    targets = torch.tensor([t for s in selected for t in s.targets], dtype=torch.long)
    top_n = min(max(s.request.sampling_params.prompt_logprobs for s in selected), vocab_size)
    per_pass = max(1, _ELEMENTS_PER_PASS // vocab_size)
    values, ids, chosen, ranks = [], [], [], []
    for a in range(0, len(rows), per_pass):
        logits = model.compute_logits(hidden[rows[a : a + per_pass].to(device)]).float()
        # log_softmax only where it is read (logit - logsumexp): no second [rows, vocab] array.
        norm = logits.logsumexp(-1, keepdim=True)
        picked = logits.gather(1, targets[a : a + per_pass, None].to(device))
        ranks.append((logits > picked).sum(-1) + 1)
        chosen.append((picked - norm).squeeze(1))
        if top_n:
            top = logits.topk(top_n, dim=-1)
            values.append(top.values - norm)
            ids.append(top.indices)
    return _split(selected, targets.tolist(), torch.cat(chosen).tolist(),
                  torch.cat(ranks).tolist(), _listed(values), _listed(ids))  # fmt: skip


def add_prompt_logprobs(results: dict[str, PromptLogprobs], requests: dict[str, Request]) -> None:
    """Append each request's new prompt logprobs (they continue where it left off)."""
    for request_id, part in results.items():
        request = requests[request_id]
        request.prompt_logprobs.extend(part.entries)
        request.prompt_logprob_ranks.extend(part.ranks)


def _listed(parts: list[torch.Tensor]) -> list[list]:
    return torch.cat(parts).tolist() if parts else []


def _split(selected, targets, chosen, ranks, top_values, top_ids) -> dict[str, PromptLogprobs]:
    out: dict[str, PromptLogprobs] = {}
    i = 0
    for s in selected:
        n = s.request.sampling_params.prompt_logprobs
        entries = []
        for j in range(i, i + s.num_rows):
            entry = dict(zip(top_ids[j][:n], top_values[j][:n])) if n else {}
            entry[targets[j]] = chosen[j]
            entries.append(entry)
        out[s.request.request_id] = PromptLogprobs(entries, ranks[i : i + s.num_rows])
        i += s.num_rows
    return out
