"""SVAE-PyTorch's hand-written GRU (model.GRUFunction, model.gru_steps) against torch's
nn.GRU: the same outputs, final state and gradients (inputs, initial state, all four
weights and biases), in chunks with the state carried over, with and without autograd,
for odd lengths; and the batched Adam update of main.py against the per-tensor one."""
import pytest
import torch

from conftest import load_module

FOLDER = "SVAE-PyTorch"


@pytest.fixture(scope="module")
def model():
    return load_module(FOLDER, "model")


def reference(net, items, state):
    """torch's own GRU on the same embedding and weights."""
    outputs, final = net.gru(net.embed(items), None if state is None else state[None])
    return outputs, final[0]


@pytest.mark.parametrize("batch,steps,with_state", [(5, 17, True), (1, 1, False),
                                                     (3, 40, False)])
def test_outputs_state_and_gradients_match_torch_gru(model, batch, steps, with_state):
    torch.manual_seed(batch * 100 + steps)
    net = model.SVAE(20, embed_dim=6, rnn_dim=7, hidden_dim=5, latent_dim=3).double()
    items = torch.randint(0, 21, (batch, steps))
    state = torch.randn(batch, 7, dtype=torch.float64) if with_state else None
    out_weights = torch.randn(batch, steps, 7, dtype=torch.float64)
    final_weights = torch.randn(batch, 7, dtype=torch.float64)
    results = []
    for run in (reference, lambda n, i, s: n.run_gru(i, s)):
        net.zero_grad()
        h0 = None if state is None else state.clone().requires_grad_()
        outputs, final = run(net, items, h0)
        ((outputs * out_weights).sum() + (final * final_weights).sum()).backward()
        grads = {name: p.grad.clone() for name, p in net.named_parameters()
                 if p.grad is not None}
        results.append((outputs.detach(), final.detach(), grads,
                        None if h0 is None else h0.grad.clone()))
    (ref_out, ref_final, ref_grads, ref_h0), (out, final, grads, h0_grad) = results
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(final, ref_final)
    assert set(grads) == set(ref_grads) and any(n.startswith("gru.") for n in grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    if state is not None:
        torch.testing.assert_close(h0_grad, ref_h0)


def test_float32_gradients_match_within_rounding(model):
    torch.manual_seed(5)
    net = model.SVAE(50, embed_dim=16, rnn_dim=12, hidden_dim=8, latent_dim=4)
    items = torch.randint(0, 51, (4, 30))
    weights = torch.randn(4, 30, 12)
    grads = []
    for run in (lambda: reference(net, items, None), lambda: net.run_gru(items)):
        net.zero_grad()
        (run()[0] * weights).sum().backward()
        grads.append([p.grad.clone() for p in net.gru.parameters()])
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_no_grad_scoring_path_equals_the_training_path(model):
    """Without autograd the recurrence reuses one step's buffers and projects the inputs
    a block at a time: the same numbers as the path that keeps everything."""
    torch.manual_seed(3)
    net = model.SVAE(30, embed_dim=8, rnn_dim=6, hidden_dim=5, latent_dim=3).double()
    items = torch.randint(0, 31, (4, 300))  # longer than one block of 128 steps
    with torch.no_grad():
        fast, fast_final = net.run_gru(items)
        ref, ref_final = reference(net, items, None)
    kept, kept_final = net.run_gru(items)
    assert torch.equal(fast, kept.detach()) and torch.equal(fast_final, kept_final.detach())
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(fast_final, ref_final)


def test_chunked_state_carry_matches_one_pass(model):
    """Truncated BPTT's chunks with the state carried over give the one-pass outputs."""
    torch.manual_seed(4)
    net = model.SVAE(30, embed_dim=8, rnn_dim=6, hidden_dim=5, latent_dim=3).double()
    items = torch.randint(0, 31, (3, 23))
    with torch.no_grad():
        whole, _ = reference(net, items, None)
        parts, state = [], None
        for start in range(0, 23, 5):
            out, state = net.run_gru(items[:, start:start + 5], state)
            parts.append(out)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole)


def test_batched_adam_update_is_the_per_tensor_one():
    """main.py builds Adam with foreach=True: bit for bit the per-tensor loop's numbers."""
    torch.manual_seed(6)
    shapes = [(40, 8), (24, 7), (24,), (13, 5), (13,)]
    start = [torch.randn(shape) for shape in shapes]
    ends = []
    for foreach in (False, True):
        params = [p.clone().requires_grad_() for p in start]
        optimizer = torch.optim.Adam(params, lr=2e-3, weight_decay=1e-4, foreach=foreach)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        ends.append([p.detach() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*ends))
