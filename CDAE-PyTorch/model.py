"""CDAE, the Collaborative Denoising Auto-Encoder of Wu et al. (WSDM 2016).

    x~  = dropout(x, q) / (1 - q)                       corrupted input (training only)
    h   = sigmoid(W^T x~ + V_u + b)                     hidden layer, V_u the user's vector
    y^u = sigmoid(W'^T h + b')                          one probability per item

Trained with the logistic (BCE) loss on each user's observed items plus a sample of
unobserved ones (or on every item), and L2 on W, W', V. Without the user node (`user_node
False`) it is the plain denoising autoencoder. A held-out user has no trained V_u: `fold_in`
fits one on the user's fold-in items with every network weight frozen.
"""
import torch
import torch.nn.functional as F
from torch import nn


class CDAE(nn.Module):
    def __init__(self, n_items, n_users, hidden=50, user_node=True, sparse_users=False):
        """sparse_users: the user vectors get sparse gradients (rows of the batch's users
        only), for torch.optim.SparseAdam; the weights and the state dict are the same."""
        super().__init__()
        self.encoder = nn.Linear(n_items, hidden)
        self.decoder = nn.Linear(hidden, n_items)
        self.user_vectors = (nn.Embedding(n_users, hidden, sparse=sparse_users) if user_node
                             else None)
        if user_node:
            nn.init.normal_(self.user_vectors.weight, std=0.01)

    @property
    def hidden_size(self):
        return self.encoder.out_features

    def forward(self, x, user_vectors=None):
        """Item logits (pre-sigmoid) for input rows x and their user vectors (or None)."""
        pre = self.encoder(x)
        if user_vectors is not None:
            pre = pre + user_vectors
        return self.decoder(torch.sigmoid(pre))

    def network_l2(self):
        """Squared norms of the weight matrices W and W' (biases are not penalised)."""
        return self.encoder.weight.square().sum() + self.decoder.weight.square().sum()


def corrupt(x, q, generator):
    """Dropout noise: each entry zeroed with probability q, the rest scaled by 1/(1-q)."""
    if q == 0:
        return x
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= q
    return x * keep / (1.0 - q)


def negative_rate(x, negatives):
    """Per user (column vector): the chance of each unobserved item to be drawn, so that
    about `negatives` unobserved items are drawn per observed one."""
    n_pos = x.sum(dim=1, keepdim=True)
    return (negatives * n_pos / (x.shape[1] - n_pos).clamp(min=1)).clamp(max=1)


def loss_mask(x, negatives, generator):
    """Which entries the loss sees: observed items, plus about `negatives` unobserved items
    per observed one, drawn per user as a Bernoulli mask (None = every item)."""
    if negatives is None:
        return None
    sampled = torch.rand(x.shape, generator=generator, device=x.device) < negative_rate(
        x, negatives)
    return (x > 0) | sampled


def expected_mask(x, negatives):
    """The mean of loss_mask: 1 on observed items, the sampling rate elsewhere."""
    if negatives is None:
        return None
    return torch.where(x > 0, torch.ones_like(x), negative_rate(x, negatives).expand_as(x))


def reconstruction_loss(logits, x, mask):
    """Per-user sum of BCE over the masked entries (all entries when mask is None);
    a float mask weights the entries."""
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    if mask is not None:
        bce = bce * mask
    return bce.sum(dim=1)


def fold_in(net, x, steps=20, lr=0.1, l2=3e-3, negatives=5.0, n_users=None):
    """User vectors V for held-out users with dense fold-in rows x, the network frozen.

    All users of x at once: V starts at zero and takes `steps` Adam steps on the training loss
    without input noise. Training draws `negatives` unobserved items per observed one; here
    each unobserved item is weighted by its sampling rate instead, the same loss in
    expectation but deterministic (negatives None: every item, weight 1). Only V is
    optimised: the network's parameters are set to not require gradients meanwhile, so
    they never receive one. Returns None (same as V = 0) without a user node or steps.
    n_users: the size of the group x is a batch of (default: x's rows); the loss is the
    group's mean, so a user's steps do not depend on how the group is cut into batches.
    """
    if net.user_vectors is None or steps == 0:
        return None
    frozen = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        weights = expected_mask(x, negatives)
        encoded = net.encoder(x)  # W^T x + b does not depend on V: computed once
        vectors = torch.zeros(x.shape[0], net.hidden_size, device=x.device,
                              requires_grad=True)
        optimiser = torch.optim.Adam([vectors], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                optimiser.zero_grad()
                logits = net.decoder(torch.sigmoid(encoded + vectors))
                loss = (reconstruction_loss(logits, x, weights)
                        + 0.5 * l2 * vectors.square().sum(dim=1)).mean()
                if n_users is not None and n_users != x.shape[0]:
                    loss = loss * (x.shape[0] / n_users)
                loss.backward()
                optimiser.step()
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    return vectors.detach()


@torch.no_grad()
def scores(net, x, user_vectors):
    """Item scores (logits; the ranking equals the sigmoid's) for dense input rows x."""
    return net(x, user_vectors)
