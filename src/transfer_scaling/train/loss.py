"""Next-token cross-entropy through the tied output head, in chunks of positions.

The plain loss materialises the logits of a whole micro-batch and upcasts them to float32: at the paper's
vocabulary (50,257) and context (1024), 49 GiB per copy for 256 sequences, more than the rest of training.
Here the head and the loss run over ``chunk_tokens`` positions at a time, and the gradients of the hidden
states and of the head are formed in the same pass (Liger-Kernel's fused linear cross-entropy does the same
in Triton), so at most one chunk's float32 logits exist at once and no logits are kept for the backward pass.
The head's gradient is accumulated in float32 across chunks, whatever the weights' dtype.
"""

from __future__ import annotations

import torch


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,  # type: ignore[override]
                chunk_tokens: int) -> torch.Tensor:
        n_tokens = targets.numel()
        wants_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if wants_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if wants_grad else None
        for begin in range(0, n_tokens, chunk_tokens):
            part, target = hidden[begin:begin + chunk_tokens], targets[begin:begin + chunk_tokens]
            logits = (part @ weight.t()).float()
            log_norm = torch.logsumexp(logits, dim=-1)
            total += (log_norm - logits.gather(1, target[:, None]).squeeze(1)).sum()
            if wants_grad:
                # d(mean loss)/d(logits) = (softmax - one_hot) / n_tokens, formed in place of the logits.
                grad_logits = logits.sub_(log_norm[:, None]).exp_()
                grad_logits[torch.arange(len(target), device=target.device), target] -= 1
                grad_logits = grad_logits.div_(n_tokens).to(hidden.dtype)
                grad_hidden[begin:begin + chunk_tokens] = grad_logits @ weight
                grad_weight += (grad_logits.t() @ part).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return total / n_tokens

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        return (grad_hidden * grad_output.to(grad_hidden.dtype),
                (grad_weight * grad_output).to(ctx.weight_dtype), None, None)


@torch.compiler.disable
def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          chunk_tokens: int) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of ``targets`` under logits ``hidden @ weight.T``, ``chunk_tokens``
    positions at a time. Left out of torch.compile: its loop of large matmuls gains nothing from a graph."""
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be a positive integer, got {chunk_tokens!r}")
    return _ChunkedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.size(-1)), weight, targets.reshape(-1),
                                            chunk_tokens)
