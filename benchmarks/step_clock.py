"""The losses' share of a training step, measured directly inside the step.

A step hands its model outputs to `LossClock.cut`, which returns them as fresh leaves; the losses are
computed from the leaves through `LossClock.loss`, which times the call (the forward). `LossClock.backward`
then differentiates each loss on its own down to the leaves, timed (the loss's backward, exactly
`torch.autograd.grad(loss, (y, y_adv))`), and runs the model's backward from the outputs with those
gradients, untimed; the optimiser steps are the step's. So the losses' time is measured apart from the
model's in the real step: inputs as cold in cache, and gradients as freshly allocated, as training sees
them. The gradients the model receives are the same as from one combined `.backward()` (the test suite
checks it).

On the CPU a span is `time.perf_counter`; on CUDA a pair of events on the current stream, read after the
step's closing synchronisation.
"""
import time

import torch


class LossClock:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.cuts = []  # (model output, leaf)
        self.pending = []  # (loss value, coefficient, leaves it was computed from)
        self.forward_spans, self.backward_spans = [], []

    def reset(self):
        self.cuts.clear()
        self.pending.clear()
        self.forward_spans.clear()
        self.backward_spans.clear()

    def cut(self, *outputs):
        """The model outputs as leaves that the losses read (each requires grad as its output does)."""
        leaves = [o.detach().requires_grad_(o.requires_grad) for o in outputs]
        self.cuts += zip(outputs, leaves)
        return leaves if len(leaves) > 1 else leaves[0]

    def loss(self, fn, *args, coefficient=1.0, **kwargs):
        """fn(*args, **kwargs), its time counted as a loss forward. The value enters the step's objective
        times `coefficient` at the next `backward` (returned for logging only)."""
        start = self._mark()
        value = fn(*args, **kwargs)
        self.forward_spans.append((start, self._mark()))
        cut_ids = {id(leaf) for _, leaf in self.cuts}
        leaves = [a for a in list(args) + list(kwargs.values())
                  if isinstance(a, torch.Tensor) and id(a) in cut_ids and a.requires_grad]
        self.pending.append((value, coefficient, leaves))
        return value

    def backward(self, model_loss=None):
        """Differentiates sum(coefficient * loss) + model_loss: each loss's own backward to the leaves
        (timed), then one backward of the model from its outputs (and model_loss, a function of the
        model outputs that no timed loss reads, e.g. a cross-entropy)."""
        grads = {}
        for value, coefficient, leaves in self.pending:
            if not leaves:
                continue
            start = self._mark()
            parts = torch.autograd.grad(value, leaves, grad_outputs=torch.full_like(value, coefficient),
                                        allow_unused=True)
            self.backward_spans.append((start, self._mark()))
            for leaf, g in zip(leaves, parts):
                if g is not None:
                    grads[id(leaf)] = g if id(leaf) not in grads else grads[id(leaf)] + g
        roots, root_grads = ([model_loss], [None]) if model_loss is not None else ([], [])
        for output, leaf in self.cuts:
            if id(leaf) in grads:
                roots.append(output)
                root_grads.append(grads[id(leaf)])
        if roots:
            torch.autograd.backward(roots, root_grads)
        self.cuts.clear()
        self.pending.clear()

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _seconds(self, spans):
        if self.cuda:
            return sum(a.elapsed_time(b) for a, b in spans) / 1e3
        return sum(b - a for a, b in spans)

    def totals(self):
        """(forward seconds, backward seconds) of the losses since reset; on CUDA after a synchronisation."""
        return self._seconds(self.forward_spans), self._seconds(self.backward_spans)
