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
"""
import numpy as np
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

    def __call__(self, rows, dropout_seed=None):
        """Reconstruct rows; dropout on the code layer when a dropout_seed (2 ints) is given."""
        x = rows
        for k, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = tf.matmul(x, weight) + bias
            if k < len(self.weights) - 1:
                x = tf.nn.selu(x)
            if k == self.n_encoder - 1 and dropout_seed is not None and self.dropout > 0:
                x = tf.nn.experimental.stateless_dropout(x, self.dropout, seed=dropout_seed)
        return x

    def squared_weight_norm(self):
        return tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.weights])


def _glorot(rng, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)


def make_optimizer(name, lr, clip_norm=None):
    """Adam or SGD with momentum 0.9; gradients rescaled to a global norm <= clip_norm."""
    if name == "momentum":
        return tf.keras.optimizers.SGD(learning_rate=lr, momentum=0.9,
                                       global_clipnorm=clip_norm)
    if name == "adam":
        return tf.keras.optimizers.Adam(learning_rate=lr, global_clipnorm=clip_norm)
    raise ValueError(f"unknown optimizer {name!r}")


def masked_mse(outputs, targets):
    """Mean squared error over the non-zero (observed) entries of targets."""
    mask = tf.cast(targets != 0, tf.float32)
    return tf.reduce_sum(tf.square((outputs - targets) * mask)) / tf.maximum(
        tf.reduce_sum(mask), 1.0)


class Trainer:
    """The optimiser and the compiled training step of a network on its input matrix.

    inputs: dense float32 tensor, one row per example (users by default), 0 = missing;
    it holds the training ratings only.
    """

    def __init__(self, network, inputs, optimizer="adam", lr=1e-3, weight_decay=0.0,
                 refeed=True, clip_norm=None, lr_decay=1.0):
        self.network = network
        self.inputs = inputs
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        self.optimizer = make_optimizer(optimizer, lr, clip_norm)
        self.optimizer.build(network.trainable_variables)  # slots exist before a restore
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
            losses.append(float(self.step(tf.constant(batch), dropout_seed)))
            if progress is not None:
                progress(losses)
            if not np.isfinite(losses[-1]):
                return losses[-1]
        return float(np.mean(losses))

    def _update(self, rows, targets, dropout_seed):
        with tf.GradientTape() as tape:
            outputs = self.network(rows, dropout_seed)
            loss = masked_mse(outputs, targets)
            objective = loss + self.weight_decay * self.network.squared_weight_norm()
        variables = self.network.trainable_variables
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return loss, outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([2], tf.int64)])
    def step(self, batch, dropout_seed):
        """One update on the rows `batch`, then one on its dense re-fed output."""
        rows = tf.gather(self.inputs, batch)
        loss, outputs = self._update(rows, rows, dropout_seed)
        if self.refeed:
            dense = tf.stop_gradient(outputs)
            self._update(dense, dense, dropout_seed + [0, 1_000_000_007])
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
