"""AutoRec (Sedhain, Menon, Sanner and Xie, WWW 2015) in TensorFlow 2.

h(r) = V sigmoid(W r + b) + c: one sigmoid hidden layer and an identity decoder. I-AutoRec
encodes each item's vector of user ratings, U-AutoRec each user's vector of item ratings.
The objective is the paper's: squared error on observed entries only plus
(lambda / 2)(||W||^2 + ||V||^2), minimised with Adam over mini-batches of rows, the
learning rate decaying by a constant factor each epoch. The mini-batch estimate of the
objective is divided by the number of observed training ratings, so its scale does not
depend on the batch size.

Input rows are masked dense tensors (0 = missing): on a CPU, TensorFlow's dense matrix
products beat its sparse kernels at this size, and the whole training matrix (3,706 x
6,040 floats, 90 MB) fits easily.
"""
import numpy as np
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
    """The optimiser and the compiled training step of a network on its input matrix.

    inputs: dense float32 tensor, one row per example (items for I-AutoRec), 0 = missing;
    it holds the training ratings only.
    """

    def __init__(self, network, inputs, lam, lr, lr_decay=1.0):
        self.network = network
        self.inputs = inputs
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        self.optimizer = tf.keras.optimizers.Adam(learning_rate=lr)
        self.optimizer.build(network.trainable_variables)  # slots exist before a restore
        n_rows = int(inputs.shape[0])
        n_observed = max(float(tf.math.count_nonzero(inputs).numpy()), 1.0)
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
            losses.append(float(self.step(tf.constant(batch))))
            if progress is not None:
                progress(losses)
            if not np.isfinite(losses[-1]):
                return losses[-1]
        return float(np.mean(losses))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])
    def step(self, batch):
        """One Adam update on the rows `batch`; returns the objective estimate."""
        rows = tf.gather(self.inputs, batch)
        mask = tf.cast(rows > 0, tf.float32)
        batch_size = tf.cast(tf.shape(batch)[0], tf.float32)
        with tf.GradientTape() as tape:
            errors = (self.network(rows) - rows) * mask
            loss = (self.row_scale / batch_size * tf.reduce_sum(tf.square(errors))
                    + self.reg_scale * self.network.squared_weight_norm())
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss


def batches(n_rows, batch_size, seed, epoch):
    """The row batches of one epoch, shuffled by a generator seeded by (seed, epoch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def predict_pairs(network, inputs, rows, cols, chunk=1024):
    """Outputs at (rows[k], cols[k]) when every row of `inputs` is reconstructed."""
    out = np.empty(len(rows), dtype=np.float32)
    for start in range(0, int(inputs.shape[0]), chunk):
        wanted = np.flatnonzero((rows >= start) & (rows < start + chunk))
        if wanted.size:
            block = network(inputs[start:start + chunk]).numpy()
            out[wanted] = block[rows[wanted] - start, cols[wanted]]
    return out
