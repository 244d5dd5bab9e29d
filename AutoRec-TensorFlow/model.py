"""AutoRec (Sedhain, Menon, Sanner and Xie, WWW 2015) in TensorFlow 2.

h(r) = V sigmoid(W r + b) + c: one sigmoid hidden layer and an identity decoder. I-AutoRec
encodes each item's vector of user ratings, U-AutoRec each user's vector of item ratings.
The objective is the paper's: squared error on observed entries only plus
(lambda / 2)(||W||^2 + ||V||^2), minimised with Adam over mini-batches of rows, the
learning rate decaying by a constant factor each epoch. The mini-batch estimate of the
objective is divided by the number of observed training ratings, so its scale does not
depend on the batch size.

The training matrix stays sparse (scipy CSR, one row per encoded vector): each batch of
rows is densified when it is used (masked dense rows, 0 = missing: on a CPU, TensorFlow's
dense matrix products beat its sparse kernels), and predictions are made a batch of rows
at a time, so memory grows with the ratings and the batch, not with users x items.

Under a tf.distribute strategy with N replicas (MirroredStrategy over N GPUs) each batch is
split into N contiguous slices, one per replica; each replica's loss is its share of the
batch objective (its squared errors over the global batch size, as
tf.nn.compute_average_loss, and 1/N of the penalty, as tf.nn.scale_regularization_loss)
and the optimiser sums the replicas' gradients, so N replicas make the update one makes.
"""
import numpy as np
import scipy.sparse as sp
import tensorflow as tf


class AutoRec(tf.Module):
    """The network: n_inputs -> hidden (sigmoid) -> n_inputs (identity)."""

    def __init__(self, n_inputs, hidden=500, seed=0):
        super().__init__(name="autorec")
        rng = np.random.RandomState(seed)
        self.encoder = tf.Variable(_glorot(rng, n_inputs, hidden), name="W")
        self.encoder_bias = tf.Variable(tf.zeros([hidden]), name="b")
        self.decoder = tf.Variable(_glorot(rng, hidden, n_inputs), name="V")
        self.decoder_bias = tf.Variable(tf.zeros([n_inputs]), name="c")

    def __call__(self, rows):
        hidden = tf.sigmoid(tf.matmul(rows, self.encoder) + self.encoder_bias)
        return tf.matmul(hidden, self.decoder) + self.decoder_bias

    def squared_weight_norm(self):
        return tf.reduce_sum(tf.square(self.encoder)) + tf.reduce_sum(tf.square(self.decoder))


def _glorot(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


class Trainer:
    """The optimiser and the training step of a network on its input matrix.

    inputs: one row per example (items for I-AutoRec), 0 = missing, the training ratings
    only; a scipy sparse matrix (or a dense array, made sparse). strategy: the
    tf.distribute strategy the network's variables were created under (default: the
    current one); the optimiser is created under it too.
    """

    def __init__(self, network, inputs, lam, lr, lr_decay=1.0, strategy=None):
        self.network = network
        self.inputs = sparse_rows(inputs)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        with self.strategy.scope():
            self.optimizer = tf.keras.optimizers.Adam(learning_rate=lr)
            self.optimizer.build(network.trainable_variables)  # slots exist before a restore
        n_rows = int(self.inputs.shape[0])
        n_observed = max(float(self.inputs.count_nonzero()), 1.0)
        self.row_scale = tf.constant(n_rows / n_observed, tf.float32)
        self.reg_scale = tf.constant(float(lam) / 2.0 / n_observed, tf.float32)

    def train_epoch(self, batch_size, seed, epoch, progress=None):
        """One pass over the rows in (seed, epoch)-shuffled batches; returns the mean loss.

        Stops early, returning a non-finite value, as soon as one batch loss is not finite.
        progress(batch_losses) is called after each batch. The learning rate of epoch e
        (from 1) is lr * lr_decay ** (e - 1).
        """
        self.optimizer.learning_rate.assign(self.lr * self.lr_decay ** (epoch - 1))
        losses = []
        for batch in batches(int(self.inputs.shape[0]), batch_size, seed, epoch):
            losses.append(float(self.step(batch)))
            if progress is not None:
                progress(losses)
            if not np.isfinite(losses[-1]):
                return losses[-1]
        return float(np.mean(losses))

    def step(self, batch):
        """One Adam update on the rows `batch` (indices into inputs); returns the objective
        estimate."""
        rows = self.inputs[np.asarray(batch)].toarray().astype(np.float32, copy=False)
        return self._distributed_step(per_replica_rows(self.strategy, rows),
                                      tf.constant(len(rows), tf.float32))

    @tf.function(reduce_retracing=True)
    def _distributed_step(self, rows, n_rows):
        losses = self.strategy.run(self._replica_step, args=(rows, n_rows))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    def _replica_step(self, rows, n_rows):
        """This replica's share of the update: its rows over the global batch size n_rows."""
        n_replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        mask = tf.cast(rows > 0, tf.float32)
        with tf.GradientTape() as tape:
            errors = (self.network(rows) - rows) * mask
            loss = (self.row_scale / n_rows * tf.reduce_sum(tf.square(errors))
                    + self.reg_scale * self.network.squared_weight_norm() / n_replicas)
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss


def sparse_rows(matrix):
    """matrix as a float32 scipy CSR matrix (rows are cheap to take); dense input too."""
    if not sp.issparse(matrix):
        matrix = np.asarray(matrix)
    return sp.csr_matrix(matrix, dtype=np.float32)


def per_replica_rows(strategy, rows):
    """A dense batch as the strategy's per-replica input: replica r gets the r-th of N
    contiguous slices (the whole batch under the default strategy)."""
    parts = np.array_split(rows, strategy.num_replicas_in_sync)
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(parts[context.replica_id_in_sync_group]))


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
