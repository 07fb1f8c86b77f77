"""AVEL / MEM / pooling helpers pinned on hand-computed examples (spec §1.4, §1.6, §3)."""
from __future__ import annotations

import math

import pytest
import torch

from foalnet.model.distributed import gather_batch
from foalnet.model.losses import (
    avel_loss,
    draw_negatives,
    hard_negative_probs,
    label_targets,
    masked_mean,
    mem_loss,
)

LN = math.log
E = math.e


def _avel(a, v, labels, tau):
    a, v = torch.tensor(a), torch.tensor(v)
    labels = torch.tensor(labels)
    return avel_loss(a, v, a, v, labels, labels, torch.tensor(tau))


def test_avel_two_items_same_label_uses_unnormalised_targets_and_divisor_tau():
    # S = I / 0.5 = [[2,0],[0,2]]; both targets 1 in each row (NOT 1/2 each):
    # row loss = -(2 - lse) - (0 - lse) = 2 ln(1+e^2) - 2, same for every row and both directions.
    loss, sim_av, sim_va = _avel([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [3, 3], 0.5)
    assert torch.allclose(sim_av, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
    assert loss.item() == pytest.approx(2 * LN(1 + E**2) - 2, abs=1e-6)  # 2.253856
    # an exp'd temperature (1/e^0.5) or row-normalised targets would give other values:
    assert loss.item() != pytest.approx(LN(1 + E**2) - 1, abs=1e-3)


def test_avel_two_items_different_labels_is_plain_infonce():
    loss, _, _ = _avel([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [0, 1], 0.5)
    assert loss.item() == pytest.approx(LN(1 + E**2) - 2, abs=1e-6)  # 0.126928


def test_avel_three_items_three_dims_asymmetric():
    # a = I3, v = [[.6,.8,0],[0,1,0],[0,0,1]], labels [0,0,1], tau = 1.
    # S_av rows: [.6,0,0], [.8,1,0], [0,0,1];  S_va = S_av^T rows: [.6,.8,0], [0,1,0], [0,0,1]
    # T = [[1,1,0],[1,1,0],[0,0,1]]
    lse = lambda *xs: LN(sum(E**x for x in xs))  # noqa: E731
    l_av = ((2 * lse(0.6, 0, 0) - 0.6) + (2 * lse(0.8, 1, 0) - 1.8) + (lse(0, 0, 1) - 1)) / 3
    l_va = ((2 * lse(0.6, 0.8, 0) - 1.4) + (2 * lse(0, 1, 0) - 1) + (lse(0, 0, 1) - 1)) / 3
    a = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    v = [[0.6, 0.8, 0], [0, 1.0, 0], [0, 0, 1.0]]
    loss, _, _ = _avel(a, v, [0, 0, 1], 1.0)
    assert loss.item() == pytest.approx((l_av + l_va) / 2, abs=1e-6)  # 1.481660
    assert loss.item() == pytest.approx(1.481660, abs=1e-5)


def test_label_targets_diagonal_and_multi_positive():
    t = label_targets(torch.tensor([2, 0, 2]), torch.tensor([2, 0, 2]))
    assert t.tolist() == [[1, 0, 1], [0, 1, 0], [1, 0, 1]]


def test_mem_loss_masks_pairs_without_a_true_negative():
    # B = 2. a2v rows: pos [0, ln3] -> ln(4/3); pos [0,0] -> ln2; neg [ln3, 0] -> ln(4/3);
    # neg row 3 has no true negative (valid False): its huge loss must not count.
    a2v = torch.tensor([[0.0, LN(3)], [0.0, 0.0], [LN(3), 0.0], [0.0, 100.0]])
    v2a = torch.zeros(4, 2)  # every row ln 2
    loss = mem_loss(a2v, v2a, torch.tensor([True, False]), torch.tensor([True, True]))
    expected = ((2 * LN(4 / 3) + LN(2)) / 3 + LN(2)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mem_loss_all_valid_is_plain_cross_entropy_mean():
    logits = torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    targets = torch.tensor([1, 1, 0, 0])
    ce = torch.nn.functional.cross_entropy(logits, targets)
    valid = torch.tensor([True, True])
    assert mem_loss(logits, logits, valid, valid).item() == pytest.approx(ce.item(), abs=1e-6)


def test_hard_negative_probs_from_a_masked_copy():
    sim = torch.tensor([[1.0, 2.0, 0.0], [5.0, 5.0, 5.0]], requires_grad=True)
    same = torch.tensor([[True, False, False], [True, True, True]])
    before = sim.detach().clone()
    probs = hard_negative_probs(sim, same)
    assert torch.equal(sim.detach(), before)  # the loss's similarity is never edited
    assert probs.grad_fn is None
    z = E**2 + 1
    assert probs[0].tolist() == pytest.approx([0.0, E**2 / z, 1 / z], abs=1e-7)
    assert probs[1].tolist() == pytest.approx([1 / 3] * 3)  # no negative: uniform (masked from MEM later)
    uniform = hard_negative_probs(None, same)  # MEM without AVEL: any different label, equally likely
    assert uniform[0].tolist() == pytest.approx([0.0, 0.5, 0.5])


def test_draw_negatives_order_is_av_then_va_from_global_rng():
    probs_av = torch.tensor([[0.0, 0.3, 0.7], [0.5, 0.0, 0.5], [0.2, 0.8, 0.0]])
    probs_va = torch.tensor([[0.0, 0.6, 0.4], [0.9, 0.0, 0.1], [0.5, 0.5, 0.0]])
    torch.manual_seed(7)
    idx_av, idx_va = draw_negatives(probs_av, probs_va)
    torch.manual_seed(7)
    want_av = torch.multinomial(probs_av, 1).squeeze(1)
    want_va = torch.multinomial(probs_va, 1).squeeze(1)
    assert torch.equal(idx_av, want_av) and torch.equal(idx_va, want_va)
    assert all(probs_av[i, j] > 0 for i, j in enumerate(idx_av.tolist()))


def test_masked_mean_ignores_padding_and_gives_zeros_for_empty_rows():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = masked_mean(x, mask)
    assert out.tolist() == [[2.0, 3.0], [0.0, 0.0]]
    x.requires_grad_(True)
    masked_mean(x, mask).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() == 0


def test_gather_batch_without_distributed_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_batch(x) is x


def _gather_worker(rank: int, world: int, init_file: str) -> None:
    """One gloo rank: ranks hold different batch sizes and sequence lengths."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        sizes, lengths = [2, 3], [4, 6]
        gen = [torch.Generator().manual_seed(10 + r) for r in range(world)]
        seqs = [torch.randn(sizes[r], lengths[r], 5, generator=gen[r]) for r in range(world)]
        masks = [torch.ones(sizes[r], lengths[r], dtype=torch.bool) for r in range(world)]
        local = seqs[rank].clone().requires_grad_(True)
        gathered = gather_batch(local)  # (5, 6, 5)
        assert gathered.shape == (5, 6, 5), gathered.shape
        for r, start in ((0, 0), (1, 2)):
            part = gathered[start:start + sizes[r], : lengths[r]]
            assert torch.equal(part.detach(), seqs[r]), r
        assert gathered[:2, 4:].abs().sum() == 0  # padded time steps are zeros
        gm = gather_batch(masks[rank])
        assert gm.dtype == torch.bool and gm.sum().item() == 2 * 4 + 3 * 6
        gathered.sum().backward()  # own slice keeps its grad, others carry none
        assert torch.equal(local.grad, torch.ones_like(local))
        # AVEL under data parallelism: this rank's rows of the full-batch computation
        emb = [torch.nn.functional.normalize(torch.randn(sizes[r], 3, generator=gen[r]), dim=-1) for r in range(world)]
        labs = [torch.tensor([0, 1]), torch.tensor([1, 1, 2])]
        a = emb[rank].clone().requires_grad_(True)
        loss, sim_av, _ = avel_loss(a, a, gather_batch(a), gather_batch(a), labs[rank],
                                    gather_batch(labs[rank]), torch.tensor(0.5))
        full = torch.cat(emb)
        rows = slice(0, 2) if rank == 0 else slice(2, 5)
        want, want_sim, _ = avel_loss(full[rows], full[rows], full, full, torch.cat(labs)[rows],
                                      torch.cat(labs), torch.tensor(0.5))
        assert torch.allclose(sim_av, want_sim, atol=1e-6) and abs(loss.item() - want.item()) < 1e-6
    finally:
        dist.destroy_process_group()


def test_gather_batch_two_gloo_processes(tmp_path):
    import torch.multiprocessing as mp

    # fork: the children reuse the imported torch (spawn would re-import it: ~10 s on 2 cores)
    mp.start_processes(_gather_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True, start_method="fork")
