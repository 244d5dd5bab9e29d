"""SVAE, the sequential variational autoencoder of Sachdeva, Manco, Ritacco and Pudi
(WSDM 2019), in PyTorch.

Per time step t of a user's item sequence: item embedding -> GRU -> encoder MLP ->
mean and log-variance of a Gaussian latent z_t -> decoder MLP -> logits over all items.
The step's loss is the multinomial negative log-likelihood of the next k items plus
beta times KL(N(mu, exp(logvar)) || N(0, I)); a user's loss is the mean over their steps,
a batch's loss the mean over its users, so padding never counts.

Long histories use truncated back-propagation through time: the GRU runs over chunks of
`bptt` steps, carrying its hidden state forward but cutting the gradient between chunks;
each chunk's loss is back-propagated at once, so memory grows with the chunk, not with
the history. Steps whose target weights are all zero (padding, the last real step, or
steps left out of the loss by the caller) cost no softmax.
"""
import torch
from torch import nn


class SVAE(nn.Module):
    def __init__(self, n_items, embed_dim=256, rnn_dim=200, hidden_dim=150, latent_dim=64,
                 dropout=0.0):
        super().__init__()
        self.n_items = n_items
        self.pad = n_items  # the padding index, one row past the real items
        self.embed = nn.Embedding(n_items + 1, embed_dim, padding_idx=self.pad)
        self.gru = nn.GRU(embed_dim, rnn_dim, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Sequential(nn.Linear(rnn_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.Tanh(),
                                     nn.Linear(hidden_dim, n_items))
        for layer in (*self.encoder, *self.decoder):
            if isinstance(layer, nn.Linear):
                nn.init.xavier_normal_(layer.weight)
                nn.init.zeros_(layer.bias)

    def run_gru(self, items, state=None):
        """GRU outputs (batch x steps x rnn_dim) and final state (batch x rnn_dim) for padded
        item ids; state: the final state of the previous chunk, or None (zeros).

        The weights are nn.GRU's (same parameters, same checkpoints); the recurrence runs in
        GRUFunction, time-major, with one matrix product per step forward and backward."""
        inputs = self.drop(self.embed(items.t()))  # steps x batch x embed_dim, contiguous
        if state is None:
            state = inputs.new_zeros(items.shape[0], self.gru.hidden_size)
        weights = (self.gru.weight_ih_l0, self.gru.weight_hh_l0, self.gru.bias_ih_l0,
                   self.gru.bias_hh_l0)
        if torch.is_grad_enabled():
            outputs, final = GRUFunction.apply(inputs, state, *weights)
        else:
            hs = gru_steps(inputs, state, *weights)[0]
            outputs, final = hs[1:], hs[-1]
        return outputs.transpose(0, 1), final

    def latent(self, hidden, sample=True, generator=None):
        """z, mu and logvar for GRU outputs; z = mu unless sampling (training)."""
        mu, logvar = self.encoder(self.drop(hidden)).chunk(2, dim=-1)
        if not sample:
            return mu, mu, logvar
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + noise * torch.exp(0.5 * logvar), mu, logvar

    def forward(self, hidden, sample=True, generator=None):
        """Logits over all items, mu and logvar for a (flat) batch of GRU outputs."""
        z, mu, logvar = self.latent(hidden, sample, generator)
        return self.decoder(z), mu, logvar


def gru_steps(inputs, h0, w_ih, w_hh, b_ih, b_hh, keep=False, block=128):
    """The GRU recurrence over inputs (steps x batch x in) from h0 (batch x hidden).

    Returns h_0 .. h_T (steps + 1 x batch x hidden) and, with keep=True (for the backward
    pass), every step's W_hh h + b_hh, sigmoid gates r | z and tanh candidate n; without
    keep, one step's buffers are reused and the input projection is formed `block` steps
    at a time, so that scoring long sequences of many users needs little memory.
    """
    steps, batch, _ = inputs.shape
    hidden = w_hh.shape[1]
    hs = inputs.new_empty(steps + 1, batch, hidden)
    size = steps if keep else 1
    gh = inputs.new_empty(size, batch, 3 * hidden)
    rz = inputs.new_empty(size, batch, 2 * hidden)
    n = inputs.new_empty(size, batch, hidden)
    hs[0] = h0
    w_hh_t = w_hh.t()
    span = steps if keep else block
    for first in range(0, steps, span):
        last = min(first + span, steps)
        gi = torch.addmm(b_ih, inputs[first:last].reshape((last - first) * batch, -1),
                         w_ih.t()).view(last - first, batch, 3 * hidden)
        for t in range(first, last):
            s, i = (t if keep else 0), gi[t - first]
            torch.addmm(b_hh, hs[t], w_hh_t, out=gh[s])
            torch.add(i[:, :2 * hidden], gh[s, :, :2 * hidden], out=rz[s])
            rz[s].sigmoid_()
            torch.addcmul(i[:, 2 * hidden:], rz[s, :, :hidden], gh[s, :, 2 * hidden:], out=n[s])
            n[s].tanh_()
            torch.lerp(n[s], hs[t], rz[s, :, hidden:], out=hs[t + 1])  # (1 - z) n + z h
    return hs, gh, rz, n


class GRUFunction(torch.autograd.Function):
    """nn.GRU's single-layer recurrence (gates r, z, n in its weight layout) with a
    hand-written backward pass.

    PyTorch's CPU GRU records every step's operations for autograd and, going backward,
    forms and accumulates the hidden-to-hidden weight gradient once per step. Here the
    forward pass stores each step's gates; the backward pass runs the recurrence of the
    hidden-state gradient alone (one small product per step) and forms all four weight and
    bias gradients, and the input gradient, with one large product each over all steps.
    Same function as nn.GRU up to float rounding (tests/test_svae.py checks outputs and
    gradients against it). inputs: steps x batch x in; h0: batch x hidden.
    """

    @staticmethod
    def forward(ctx, inputs, h0, w_ih, w_hh, b_ih, b_hh):
        hs, gh, rz, n = gru_steps(inputs, h0, w_ih, w_hh, b_ih, b_hh, keep=True)
        ctx.save_for_backward(inputs, w_ih, w_hh, hs, gh, rz, n)
        return hs[1:], hs[-1].clone()

    @staticmethod
    def backward(ctx, d_outputs, d_final):
        inputs, w_ih, w_hh, hs, gh, rz, n = ctx.saved_tensors
        steps, batch, hidden = n.shape
        r, z, h_prev = rz[..., :hidden], rz[..., hidden:], hs[:steps]
        # per step, d(pre-activation) = dh * factor, with factors known from the forward:
        to_n = (1 - z) * (1 - n * n)                     # candidate n, before tanh
        to_z = (h_prev - n) * z * (1 - z)                # gate z, before sigmoid
        to_r = gh[..., 2 * hidden:] * r * (1 - r)        # gate r, times d(pre-tanh n)
        d_gh = inputs.new_empty(steps, batch, 3 * hidden)  # gradient of W_hh h + b_hh
        d_n = inputs.new_empty(steps, batch, hidden)       # gradient of the pre-tanh n
        dh = (d_final.clone() if d_final is not None
              else inputs.new_zeros(batch, hidden))
        for t in range(steps - 1, -1, -1):
            if d_outputs is not None:
                dh += d_outputs[t]
            torch.mul(dh, to_n[t], out=d_n[t])
            torch.mul(d_n[t], to_r[t], out=d_gh[t, :, :hidden])
            torch.mul(dh, to_z[t], out=d_gh[t, :, hidden:2 * hidden])
            torch.mul(d_n[t], r[t], out=d_gh[t, :, 2 * hidden:])
            dh = torch.addmm(dh * z[t], d_gh[t], w_hh)
        d_gh = d_gh.view(steps * batch, 3 * hidden)
        d_gi = torch.cat([d_gh[:, :2 * hidden], d_n.view(steps * batch, hidden)], dim=1)
        flat_inputs = inputs.reshape(steps * batch, -1)
        d_inputs = (d_gi @ w_ih).view_as(inputs) if ctx.needs_input_grad[0] else None
        return (d_inputs, dh, d_gi.t() @ flat_inputs, d_gh.t() @ h_prev.reshape(-1, hidden),
                d_gi.sum(dim=0), d_gh.sum(dim=0))


def kl_divergence(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, summed over latent dimensions."""
    return 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(dim=-1)


def step_losses(model, hidden, targets, weights, sample=True, generator=None):
    """Negative log-likelihood of each step's next items, and each step's KL term.

    hidden: (steps x rnn_dim) GRU outputs; targets: (steps x k) item ids; weights: 1.0
    where a target is real, 0.0 where the sequence ended before it.
    """
    logits, mu, logvar = model(hidden, sample, generator)
    log_norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    log_probs = logits.gather(1, targets) - log_norm
    return -(log_probs * weights).sum(dim=-1), kl_divergence(mu, logvar)


def batch_loss(model, items, targets, weights, n_steps, beta, bptt, sample=True,
               generator=None, backward=False, n_users=None):
    """Mean over users of each user's mean step loss, chunk by chunk (truncated BPTT).

    items: (users x T) padded item ids; targets, weights: (users x T x k); n_steps: number
    of steps with at least one target per user (> 0). With backward=True each chunk's share
    of the loss is back-propagated as soon as it is computed. Returns the loss (float) and
    its two parts (mean NLL and mean KL, floats). n_users (default: the rows of items): the
    users the mean is over, more than items holds when it is one process's shard of a batch.
    """
    length = items.shape[1]
    n_users = items.shape[0] if n_users is None else n_users
    share = 1.0 / (n_steps.to(torch.float32) * n_users)  # each step's weight in the mean
    state, totals = None, torch.zeros(3, device=items.device)
    for start in range(0, length, bptt):
        stop = min(start + bptt, length)
        output, state = model.run_gru(items[:, start:stop], state)
        state = state.detach()
        has_target = weights[:, start:stop, 0] > 0
        if not has_target.any():
            continue
        rows = has_target.nonzero(as_tuple=True)[0]
        nll, kl = step_losses(model, output[has_target], targets[:, start:stop][has_target],
                              weights[:, start:stop][has_target], sample, generator)
        step_share = share[rows]
        nll_part, kl_part = (nll * step_share).sum(), (kl * step_share).sum()
        loss = nll_part + beta * kl_part
        if backward:
            loss.backward()
        totals += torch.stack([loss.detach(), nll_part.detach(), kl_part.detach()])
    return tuple(float(v) for v in totals.cpu())


@torch.no_grad()
def last_step_scores(model, items, lengths):
    """Logits of the last real step of each padded sequence (the latent mean, no sampling).

    A user with an empty sequence gets the scores of a zero GRU state.
    """
    output, _ = model.run_gru(items)
    last = (lengths - 1).clamp(min=0)
    hidden = output[torch.arange(len(lengths), device=items.device), last]
    hidden = torch.where((lengths > 0)[:, None], hidden, torch.zeros_like(hidden))
    logits, _, _ = model(hidden, sample=False)
    return logits


@torch.no_grad()
def mean_step_scores(model, items, lengths, max_rows=8192):
    """Log of the mean next-item distribution over every real step of each sequence.

    An alternative to last_step_scores for targets spread over the whole history (the
    random hold-out). Steps are decoded max_rows at a time; empty sequences score as a zero
    GRU state does.
    """
    output, _ = model.run_gru(items)
    real = torch.arange(items.shape[1], device=items.device)[None, :] < lengths[:, None]
    rows = real.nonzero(as_tuple=True)[0]
    hidden = output[real]
    totals = torch.zeros(len(lengths), model.n_items, device=items.device)
    for start in range(0, len(rows), max_rows):
        logits, _, _ = model(hidden[start:start + max_rows], sample=False)
        totals.index_add_(0, rows[start:start + max_rows], torch.softmax(logits, dim=-1))
    empty = lengths == 0
    if empty.any():
        totals[empty] = torch.softmax(last_step_scores(model, items[empty], lengths[empty]), -1)
    return torch.log(totals / lengths.clamp(min=1)[:, None].to(totals.dtype))
