"""EASE (Steck, WWW 2019) and full-rank EDLAE (Steck, NeurIPS 2020), in closed form.

Both are item-item autoencoders B with a zero diagonal, solved from the Gram matrix
G = X^T X with a diagonal penalty Lambda:

    P = (G + Lambda)^-1,   B = I - P diag(1 / diag(P))   (so diag(B) = 0)

EASE:  Lambda = lambda I.
EDLAE: Lambda = p / (1 - p) diagMat(diag(G)) + lambda I, p the dropout rate: the
       expected loss of emphasized denoising (only the dropped-out entries of the output
       count) adds p/(1-p) G_jj b_j^2 to the L2 penalty, and an item dropped from the input
       cannot predict itself, hence diag(B) = 0 (Steck 2020, Eqs. 8 and 9). With p = 0 it
       is EASE.

The final B is always solved in float64 (one Cholesky factorisation and inverse). The
lambda search only needs the validation users' scores: `validation_scorer` solves them in
the precision asked for (float32 in main.py's search), and `search_grid` finds the best
value of a sorted grid with few solves when the validation curve is unimodal.
"""
import numpy as np
import scipy.sparse as sp
import torch


def gram_matrix(train, device):
    """X^T X of the sparse 0/1 training matrix as a dense float32 tensor on device.

    Its entries are co-occurrence counts, whole numbers below the number of users, so
    float32 holds them exactly (below 2^24) at half the memory of float64: at 26,744 items
    (ML-20M) that is 2.9 GB instead of 5.7 GB. Every solve converts it to its own dtype.
    """
    train = sp.csr_matrix(train, dtype=np.float32)
    if train.shape[0] >= 2 ** 24 or (train.data != 1).any():
        raise ValueError("gram_matrix expects a 0/1 matrix with fewer than 2^24 rows")
    return torch.from_numpy((train.T @ train).toarray()).to(device)


def edlae_penalty(gram, lam, dropout):
    """The diagonal of Lambda (a float64 vector on gram's device): lambda + p/(1-p) G_jj."""
    if not lam > 0:
        raise ValueError(f"lambda must be positive, not {lam}")
    if not 0 <= dropout < 1:
        raise ValueError(f"the dropout rate must be in [0, 1), not {dropout}")
    return gram.diagonal().double() * (dropout / (1.0 - dropout)) + lam


def regularised(gram, penalty, dtype):
    """G + diagMat(penalty), a new n x n tensor in dtype."""
    matrix = gram.to(dtype, copy=True)
    matrix.diagonal().add_(penalty.to(dtype))
    return matrix


def invert_in_place(matrix):
    """matrix^-1 by Cholesky, written over matrix (symmetric positive definite): only
    one more n x n buffer is needed at a time, inside the factorisation."""
    torch.linalg.cholesky(matrix, out=matrix)
    torch.cholesky_inverse(matrix, out=matrix)
    return matrix


def _precision(gram, penalty, dtype):
    """P = (G + diagMat(penalty))^-1 in dtype, by Cholesky."""
    return invert_in_place(regularised(gram, penalty, dtype))


def weights_in_place(precision):
    """B = I - P diag(1/diag(P)), written over P: zero diagonal."""
    weights = precision.div_(precision.diagonal().clone()).neg_()
    weights.diagonal().zero_()
    return weights


def closed_form(gram, penalty, dtype=torch.float64):
    """B = I - P diag(1/diag(P)), P = (G + diagMat(penalty))^-1: zero diagonal, row-major."""
    return row_major(weights_in_place(_precision(gram, penalty, dtype)))


def row_major(matrix):
    """matrix in row-major (C) order, copied once if it is not. The Gram matrix comes out of
    scipy column-major, and so does every solve made from it in place; scipy's sparse-dense
    product would copy a column-major operand on every call (at 26,744 items, 5.7 GB per
    batch of users, most of the scoring time)."""
    return matrix.contiguous()


def ease_weights(gram, lam):
    """The EASE item-item matrix B for one lambda (float64, zero diagonal)."""
    return closed_form(gram, edlae_penalty(gram, lam, 0.0))


def edlae_weights(gram, lam, dropout):
    """The full-rank EDLAE matrix B for lambda and dropout rate p (float64, zero diagonal)."""
    return closed_form(gram, edlae_penalty(gram, lam, dropout))


def validation_scorer(gram, penalty, dtype=torch.float32):
    """A function rows -> scores X_v B (float64 NumPy) with B solved in dtype but never
    formed: X_v B = X_v - (X_v P) diag(1/diag P). The X_v term only touches fold-in items,
    which the metrics mask, but it is kept. Call it on batches of rows: each call holds a
    dense rows x items block."""
    precision = row_major(_precision(gram, penalty, dtype))
    inverse_diagonal = 1.0 / precision.diagonal().double().cpu().numpy()

    def score(rows):
        rows = sp.csr_matrix(rows, dtype=np.float64)
        return rows.toarray() - sparse_times_dense(rows, precision) * inverse_diagonal
    return score


def sparse_times_dense(rows, dense):
    """rows (scipy sparse) @ dense (torch, any device) as float64 NumPy."""
    if dense.device.type == "cpu":
        return np.asarray(rows.astype(dense.numpy().dtype) @ dense.numpy(), dtype=np.float64)
    coo = rows.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    sparse = torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), coo.shape)
    return (sparse.to(dense) @ dense).double().cpu().numpy()


def scores(weights, fold_in):
    """Item scores X_u B for the held-out users' fold-in rows (scipy sparse) as float64
    NumPy, computed in weights' dtype (a sparse-dense product: the rows have few items)."""
    return sparse_times_dense(sp.csr_matrix(fold_in), weights)


def search_grid(values, score):
    """The value of the grid `values` with the highest score(value), evaluating few of them.

    The grid is sorted; a discrete golden-section search narrows the bracket of the
    maximum, assuming score is unimodal over the grid (rising, then falling: the
    validation curve of an L2 weight), then every value left in the bracket (at most
    three) is scored. Ties go to the smaller value, as in an exhaustive search over the
    sorted grid. score is called at most once per value; returns (best value, its score).
    """
    grid = sorted(set(values))
    cache = {}

    def f(index):
        if index not in cache:
            cache[index] = score(grid[index])
        return cache[index]

    low, high = 0, len(grid) - 1
    while high - low > 2:
        step = max(1, round((high - low) * 0.381966))
        left, right = low + step, high - step
        if left >= right:
            left, right = (low + high) // 2, (low + high) // 2 + 1
        if f(left) >= f(right):
            high = right
        else:
            low = left
    best = max(range(low, high + 1), key=lambda i: (f(i), -i))
    return grid[best], cache[best]
