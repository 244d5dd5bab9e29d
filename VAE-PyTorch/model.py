"""Mult-VAE and Mult-DAE of Liang et al. (WWW 2018), "Variational Autoencoders for
Collaborative Filtering", in PyTorch.

Network [I-600-200-600-I] with tanh hidden layers. The input row (a user's items) is
L2-normalised, then dropped out; the encoder gives the mean and log-variance of a Gaussian
over the 200-d code (Mult-VAE) or the code itself (Mult-DAE). Training samples the code by
reparameterisation; evaluation uses the mean. The loss is the multinomial negative
log-likelihood (log-softmax over all items) plus beta times the KL divergence from N(0, I).
All randomness (dropout mask, code noise) comes from a torch.Generator the caller passes,
so an epoch's noise depends only on how that generator was seeded.

Input rows stay sparse: a batch is the CSR rows' item indices and values, and the first
layer is an embedding_bag (a sparse-times-dense product), so its cost grows with the
number of a batch's items, not with users x items. Dropout on a zero entry is a no-op, so
only the stored entries are dropped out. Only the output layer is dense (the softmax).
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class SparseRows:
    """Rows of a binary user x item matrix on a device: row r's entries are
    items[offsets[r]:offsets[r + 1]] with values values[...]; rows repeats r for each."""
    items: torch.Tensor
    offsets: torch.Tensor
    rows: torch.Tensor
    values: torch.Tensor
    n_rows: int


def sparse_rows(csr, device):
    """SparseRows of a scipy CSR matrix (a batch of users)."""
    counts = np.diff(csr.indptr)
    return SparseRows(
        items=torch.from_numpy(csr.indices.astype(np.int64)).to(device),
        offsets=torch.from_numpy(csr.indptr[:-1].astype(np.int64)).to(device),
        rows=torch.from_numpy(np.repeat(np.arange(csr.shape[0]), counts)).to(device),
        values=torch.from_numpy(csr.data.astype(np.float32)).to(device),
        n_rows=csr.shape[0])


class MultVAE(nn.Module):
    """Mult-VAE (variational=True) or Mult-DAE (variational=False) over n_items."""

    def __init__(self, n_items, hidden=600, latent=200, dropout=0.5, variational=True):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.variational = variational
        self.dropout = dropout
        self.latent = latent
        self.encoder = nn.EmbeddingBag(n_items, hidden, mode="sum")  # x W for sparse x
        self.encoder_bias = nn.Parameter(torch.zeros(hidden))
        self.code = nn.Linear(hidden, 2 * latent if variational else latent)
        self.decoder = nn.Linear(latent, hidden)
        self.output = nn.Linear(hidden, n_items)
        for layer in (self.encoder, self.code, self.decoder, self.output):
            nn.init.xavier_uniform_(layer.weight)        # as the paper's code
        for bias in (self.encoder_bias, self.code.bias, self.decoder.bias, self.output.bias):
            nn.init.normal_(bias, std=0.001)

    def encode(self, x, generator=None):
        """Mean and log-variance (None for Mult-DAE) of the code of the SparseRows x."""
        squares = torch.zeros(x.n_rows, device=x.values.device).index_add_(
            0, x.rows, x.values ** 2)
        values = x.values / squares.sqrt().clamp_min(1e-12)[x.rows]   # L2-normalised rows
        if self.training and self.dropout > 0:
            keep = torch.rand(values.shape, generator=generator,
                              device=values.device) >= self.dropout
            values = values * keep / (1 - self.dropout)
        h = self.encoder(x.items, x.offsets, per_sample_weights=values)
        h = torch.tanh(h + self.encoder_bias)
        code = self.code(h)
        if not self.variational:
            return code, None
        return code[:, :self.latent], code[:, self.latent:]

    def decode(self, z):
        """Unnormalised item logits of the codes z."""
        return self.output(torch.tanh(self.decoder(z)))

    def forward(self, x, generator=None):
        """(logits, mu, logvar); the code is sampled in training, the mean at evaluation."""
        mu, logvar = self.encode(x, generator)
        z = mu
        if self.variational and self.training:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + noise * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def loss_terms(logits, x, mu, logvar):
    """Batch means of the multinomial negative log-likelihood of the SparseRows x (the
    unnormalised input) and of the KL divergence."""
    log_probs = torch.log_softmax(logits, dim=1)
    neg_ll = -(log_probs[x.rows, x.items] * x.values).sum() / x.n_rows
    if logvar is None:
        return neg_ll, torch.zeros((), device=logits.device)
    kl = 0.5 * (torch.exp(logvar) + mu ** 2 - 1 - logvar).sum(dim=1).mean()
    return neg_ll, kl


def anneal_beta(step, total_anneal_steps, cap):
    """KL weight after `step` updates: step / total_anneal_steps, at most cap (paper, 2.2)."""
    if total_anneal_steps <= 0:
        return cap
    return min(cap, step / total_anneal_steps)
