"""Plant known drift into a model's residual stream with hooks, for known-answer tests.

Each edit is applied to the output of decoder layer ``k`` and undone at the input of the next block (or
the final norm), so the captured residual stream at layer ``k`` carries exactly the planted change while
the model's logits, and so its generated answers, stay the same. The measured change must then equal
the planted one: nothing else moved.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from drift_suite.measure import extract
from drift_suite.measure.decode import left_pad
from drift_suite.measure.models import decoder_layers

Edit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(hidden (B,T,H), row_mask (B,)) -> edited hidden."""


def _next_module(model: torch.nn.Module, layer: int) -> torch.nn.Module:
    layers = decoder_layers(model)
    return layers[layer + 1] if layer + 1 < len(layers) else model.model.norm


@contextmanager
def planted(model: torch.nn.Module, layer: int, edit: Edit, undo: Edit, row_filter: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[None]:
    """Apply ``edit`` after ``layer`` and ``undo`` before the next block; ``row_filter(prompt_ids) -> (B,) bool``
    picks which conversations are edited (all when None), decided from each batch's whole prompts."""
    rows: dict[str, torch.Tensor] = {}
    real_decode = extract.decode

    def decode_remembering_rows(model_, prompt_rows, *args, **kwargs):
        # Decided on whole prompts: a shared-prefix prefill never shows one forward the whole prompt.
        ids, _mask = left_pad(prompt_rows, pad_id=0)
        rows["mask"] = row_filter(ids) if row_filter else torch.ones(len(prompt_rows), dtype=torch.bool)
        return real_decode(model_, prompt_rows, *args, **kwargs)

    def applies(hidden: torch.Tensor) -> bool:
        # The shared-prefix stage of the prefill runs other rows; nothing is captured there, so leave it be.
        return hidden.shape[0] == rows["mask"].shape[0]

    def after(_module, _args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if not applies(hidden):
            return output
        edited = edit(hidden, rows["mask"])
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    def before(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if not applies(hidden):
            return args, kwargs
        if args:
            return (undo(args[0], rows["mask"]), *args[1:]), kwargs
        kwargs["hidden_states"] = undo(kwargs["hidden_states"], rows["mask"])
        return args, kwargs

    handles = [
        decoder_layers(model)[layer].register_forward_hook(after),
        _next_module(model, layer).register_forward_pre_hook(before, with_kwargs=True),
    ]
    extract.decode = decode_remembering_rows
    try:
        yield
    finally:
        extract.decode = real_decode
        for handle in handles:
            handle.remove()


def add_vector(vector: torch.Tensor) -> tuple[Edit, Edit]:
    def edit(h, mask):
        return h + vector.to(h.dtype) * mask[:, None, None].to(h.dtype)

    def undo(h, mask):
        return h - vector.to(h.dtype) * mask[:, None, None].to(h.dtype)

    return edit, undo


def rotate(matrix: torch.Tensor) -> tuple[Edit, Edit]:
    """Rotate every residual vector by an orthogonal ``matrix``; undone by its transpose."""

    def apply(h, mask, m):
        rotated = (h.double() @ m.T).to(h.dtype)
        return torch.where(mask[:, None, None], rotated, h)

    return (lambda h, mask: apply(h, mask, matrix)), (lambda h, mask: apply(h, mask, matrix.T))


def rotation_in_plane(a: torch.Tensor, b: torch.Tensor, theta_deg: float) -> torch.Tensor:
    """Orthogonal matrix rotating by ``theta`` in the plane of orthonormal ``a``, ``b`` (float64)."""
    a, b = a.double(), b.double()
    t = torch.tensor(theta_deg, dtype=torch.float64).deg2rad()
    eye = torch.eye(len(a), dtype=torch.float64)
    return eye + (torch.cos(t) - 1) * (torch.outer(a, a) + torch.outer(b, b)) + torch.sin(t) * (torch.outer(b, a) - torch.outer(a, b))


def contains_tokens(sequence: list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A row filter: conversations whose prompt contains ``sequence`` (e.g. one role's system prompt)."""
    needle = torch.tensor(sequence)

    def row_filter(input_ids: torch.Tensor) -> torch.Tensor:
        windows = input_ids.unfold(1, len(needle), 1)
        return (windows == needle).all(-1).any(-1)

    return row_filter
