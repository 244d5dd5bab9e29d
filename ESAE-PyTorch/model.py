"""EASE, the embarrassingly shallow autoencoder of Steck (WWW 2019), in closed form.

B = I - P diag(1 / diag(P)) with P = (X^T X + lambda I)^-1, so diag(B) = 0. The Gram
matrix is built once from the sparse input; each lambda costs one Cholesky factorisation
and inverse in float64, on the GPU when one is given.
"""
import numpy as np
import scipy.sparse as sp
import torch


def gram_matrix(train, device):
    """X^T X of the sparse training matrix as a dense float64 tensor on device."""
    train = sp.csr_matrix(train, dtype=np.float64)
    return torch.from_numpy((train.T @ train).toarray()).to(device)


def ease_weights(gram, lam):
    """The EASE item-item matrix B for one lambda (float64, zero diagonal)."""
    if lam <= 0:
        raise ValueError(f"lambda must be positive, not {lam}")
    regularised = gram.clone()
    regularised.diagonal().add_(lam)
    precision = torch.cholesky_inverse(torch.linalg.cholesky(regularised))
    del regularised
    weights = precision.div_(precision.diagonal().clone()).neg_()  # in place: n x n is large
    weights.diagonal().zero_()
    return weights


def scores(weights, fold_in):
    """Item scores X_u B for the held-out users' fold-in rows (scipy sparse) as NumPy."""
    rows = torch.from_numpy(sp.csr_matrix(fold_in).toarray()).to(weights)
    return (rows @ weights).cpu().numpy()
