"""Deep autoencoder for ratings (Kuchaiev and Ginsburg 2017, "Training Deep AutoEncoders
for Collaborative Filtering") in TensorFlow 2.

Encoder n_inputs -> hidden[0] -> ... -> hidden[-1] (the code), decoder mirrored back to
n_inputs, separate (untied) weights. SELU after every layer but the last, which is linear
so that outputs live on the rating scale; dropout on the code layer only. The loss is the
masked MSE: squared error over the observed entries of the batch divided by their number.

Dense re-feeding (the paper's section 3.3): after the update on a sparse batch x, the
output f(x) is a dense vector that a perfect model would reproduce, so (f(x), f(x)) is
used as a new example, input and target, for a second update in the same step.
All randomness (initial weights, batch order, dropout) derives from the seed and the epoch,
so a resumed run repeats an uninterrupted one exactly.

The training matrix stays sparse (scipy CSR, one row per encoded vector): each batch of
rows is densified when it is used, and predictions are made a batch of rows at a time, so
memory grows with the ratings and the batch, not with users x items.

Under a tf.distribute strategy with N replicas (MirroredStrategy over N GPUs) each batch is
split into N contiguous slices, one per replica. Each replica's loss is its share of the
batch's: its squared errors over the number of observed entries of the whole batch
(summed across replicas) and 1/N of the weight decay; the gradient clip is computed on the
gradient summed over the replicas, and each replica hands the optimiser its gradient
scaled by that clip factor (the optimiser sums them). The dropout mask of the code layer is
drawn for the whole batch and sliced. So N replicas make the update one makes.
"""
import numpy as np
import scipy.sparse as sp
import tensorflow as tf


class DeepAutoEncoder(tf.Module):

    def __init__(self, n_inputs, hidden=(512, 512, 1024), dropout=0.8, seed=0):
        super().__init__(name="deep_autoencoder")
        rng = np.random.RandomState(seed)
        sizes = [int(n_inputs), *hidden]
        shapes = list(zip(sizes[:-1], sizes[1:]))
        shapes += [(b, a) for a, b in reversed(shapes)]
        self.weights = [tf.Variable(_glorot(rng, a, b), name=f"W{k}")
                        for k, (a, b) in enumerate(shapes)]
        self.biases = [tf.Variable(tf.zeros([b]), name=f"b{k}")
                       for k, (a, b) in enumerate(shapes)]
        self.n_encoder = len(hidden)
        self.dropout = float(dropout)

    def __call__(self, rows, dropout_seed=None, row_offset=0, batch_rows=None):
        """Reconstruct rows; dropout on the code layer when a dropout_seed (2 ints) is given.

        rows may be the slice [row_offset, row_offset + len(rows)) of a batch of batch_rows
        rows (one replica's share): the dropout mask is then that slice of the whole
        batch's mask, so the split batch is dropped out as the whole one would be.
        """
        x = rows
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = tf.matmul(x, weight) + bias
            if k < len(self.weights) - 1:
                x = tf.nn.selu(x)
            if k == self.n_encoder - 1 and dropout_seed is not None and self.dropout > 0:
                x = self._dropout(x, dropout_seed, row_offset, batch_rows)
        return x

    def _dropout(self, x, seed, row_offset, batch_rows):
        if batch_rows is None:
            return tf.nn.experimental.stateless_dropout(x, self.dropout, seed=seed)
        n = tf.shape(x)[0]
        whole = tf.pad(x, [[row_offset, batch_rows - row_offset - n], [0, 0]])
        dropped = tf.nn.experimental.stateless_dropout(whole, self.dropout, seed=seed)
        return dropped[row_offset:row_offset + n]

    def squared_weight_norm(self):
        return tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.weights])


def _glorot(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def make_optimizer(name, lr):
    """Adam or SGD with momentum 0.9 (the gradient clip is Trainer's)."""
    if name == "momentum":
        return tf.keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def clip_factor(gradients, clip_norm):
    """The factor that rescales gradients to a global norm <= clip_norm (1 without a clip),
    computed as Keras's global_clipnorm does."""
    if clip_norm is None:
        return tf.constant(1.0)
    norm = tf.linalg.global_norm(gradients)
    return clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)  # NaN stays


def masked_mse(outputs, targets):
    """Mean squared error over the non-zero (observed) entries of targets; in a replica
    of a tf.distribute strategy, this replica's share of the batch's: its squared errors
    over the observed entries of all replicas."""
    mask = tf.cast(targets != 0, tf.float32)
    observed = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, tf.reduce_sum(mask))
    return tf.reduce_sum(tf.square((outputs - targets) * mask)) / tf.maximum(observed, 1.0)


class Trainer:
    """The optimiser and the training step of a network on its input matrix.

    inputs: one row per example (users by default), 0 = missing, the training ratings
    only; a scipy sparse matrix (or a dense array, made sparse). strategy: the
    tf.distribute strategy the network's variables were created under (default: the
    current one); the optimiser is created under it too.
    """

    def __init__(self, network, inputs, optimizer="adam", lr=1e-3, weight_decay=0.0,
                 refeed=True, clip_norm=None, lr_decay=1.0, strategy=None):
        self.network = network
        self.inputs = sparse_rows(inputs)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        with self.strategy.scope():
            self.optimizer = make_optimizer(optimizer, lr)
            self.optimizer.build(network.trainable_variables)  # slots exist before a restore
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.weight_decay = tf.constant(float(weight_decay) / 2.0, tf.float32)
        self.refeed = bool(refeed)

    def train_epoch(self, batch_size, seed, epoch, progress=None):
        """One pass over the rows in (seed, epoch)-shuffled batches; returns the mean loss
        of the sparse updates (the re-feeding loss is not included).

        Stops early, returning a non-finite value, as soon as one batch loss is not finite.
        progress(batch_losses) is called after each batch. The learning rate of epoch e
        (from 1) is lr * lr_decay ** (e - 1).
        """
        self.optimizer.learning_rate.assign(self.lr * self.lr_decay ** (epoch - 1))
        losses = []
        for number, batch in enumerate(batches(int(self.inputs.shape[0]), batch_size,
                                               seed, epoch)):
            dropout_seed = tf.constant([seed, epoch * 1_000_003 + number], tf.int64)
            losses.append(float(self.step(batch, dropout_seed)))
            if progress is not None:
                progress(losses)
            if not np.isfinite(losses[-1]):
                return losses[-1]
        return float(np.mean(losses))

    def step(self, batch, dropout_seed):
        """One update on the rows `batch` (indices into inputs), then one on its dense
        re-fed output; returns the loss of the first."""
        rows = self.inputs[np.asarray(batch)].toarray().astype(np.float32, copy=False)
        return self._distributed_step(*per_replica_rows(self.strategy, rows),
                                      tf.constant(len(rows), tf.int32),
                                      tf.convert_to_tensor(dropout_seed, tf.int64))

    @tf.function(reduce_retracing=True)
    def _distributed_step(self, rows, offsets, n_rows, dropout_seed):
        losses = self.strategy.run(self._replica_step,
                                   args=(rows, offsets, n_rows, dropout_seed))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _replica_step(self, rows, offset, n_rows, dropout_seed):
        """This replica's share of the step: its rows, the slice [offset, offset + len)
        of a batch of n_rows."""
        loss, outputs = self._update(rows, rows, dropout_seed, offset, n_rows)
        if self.refeed:
            dense = tf.stop_gradient(outputs)
            self._update(dense, dense, dropout_seed + [0, 1_000_000_007], offset, n_rows)
        return loss

    def _update(self, rows, targets, dropout_seed, offset, n_rows):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = self.network(rows, dropout_seed, offset, n_rows)
            loss = masked_mse(outputs, targets)
            objective = (loss + self.weight_decay * self.network.squared_weight_norm()
                         / context.num_replicas_in_sync)
        variables = self.network.trainable_variables
        gradients = tape.gradient(objective, variables)
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
        factor = clip_factor(summed, self.clip_norm)
        self.optimizer.apply_gradients(zip([g * factor for g in gradients], variables))
        return loss, outputs


def sparse_rows(matrix):
    """matrix as a float32 scipy CSR matrix (rows are cheap to take); dense input too."""
    if not sp.issparse(matrix):
        matrix = np.asarray(matrix)
    return sp.csr_matrix(matrix, dtype=np.float32)


def per_replica_rows(strategy, rows):
    """A dense batch as the strategy's per-replica inputs (rows, row offset): replica r
    gets the r-th of N contiguous slices (the whole batch under the default strategy)."""
    parts = np.array_split(rows, strategy.num_replicas_in_sync)
    offsets = np.cumsum([0] + [len(part) for part in parts[:-1]])

    def value(function):
        return strategy.experimental_distribute_values_from_function(
            lambda context: function(context.replica_id_in_sync_group))
    return (value(lambda r: tf.constant(parts[r])),
            value(lambda r: tf.constant(offsets[r], tf.int32)))


def batches(n_rows, batch_size, seed, epoch):
    """The row batches of one epoch, shuffled by a generator seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def predict_pairs(network, inputs, rows, cols, chunk=1024, max_floats=2 ** 24):
    """Outputs at (rows[k], cols[k]) when the rows of `inputs` (sparse or dense) are
    reconstructed: only the rows that hold a pair, `chunk` of them at a time (fewer when
    a dense chunk of inputs would pass max_floats: 64 MiB, large enough that each call
    reads the weights for many rows)."""
    inputs = sparse_rows(inputs)
    rows, cols = np.asarray(rows), np.asarray(cols)
    chunk = max(1, min(chunk, max_floats // max(int(inputs.shape[1]), 1)))
    needed, position = np.unique(rows, return_inverse=True)
    order = np.argsort(position, kind="stable")  # the pairs grouped by row, rows in order
    grouped = position[order]
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(needed), chunk):
        low, high = np.searchsorted(grouped, [start, start + chunk])
        wanted = order[low:high]
        block = network(tf.constant(inputs[needed[start:start + chunk]].toarray())).numpy()
        out[wanted] = block[position[wanted] - start, cols[wanted]]
    return out
