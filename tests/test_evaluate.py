"""Clustering accuracy and the importance-sampled log-likelihood estimator."""
import math

import numpy as np
import pytest
import torch

from pipeline.evaluation.likelihood import iw_log_likelihood
from pipeline.evaluation.metrics import assign_clusters, cluster_scores, hungarian_accuracy
from pipeline.models.registry import build_model
from pipeline.models.kinds.moe_vae import MoEVAE
from tests.conftest import model_cfg


def test_hungarian_on_a_permuted_labelling_is_perfect():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    perm = rng.permutation(10)
    scores = cluster_scores(labels, perm[labels], 10)
    assert scores == pytest.approx({"cluster_accuracy": 1.0, "nmi": 1.0, "ari": 1.0})
    acc, mapping = hungarian_accuracy(labels, perm[labels], 10)
    assert all(mapping[perm[d]] == d for d in range(10))


def test_hungarian_counts_errors_and_unmatched_clusters():
    labels = np.array([0] * 10 + [1] * 10)
    clusters = np.array([5] * 9 + [3] + [2] * 10)  # one 0 sent to a spare cluster
    assert hungarian_accuracy(labels, clusters, 6)[0] == pytest.approx(0.95)
    merged = np.zeros(20, dtype=int)  # one cluster for two digits: half can be matched
    assert hungarian_accuracy(labels, merged, 1)[0] == pytest.approx(0.5)


def known_model(seed=0, k=3, latent=2, d=12):
    """MoE whose decoders ignore z, so p_k(x) = prod Bernoulli(x; sigmoid(c_k)) exactly
    and log p(x) = logsumexp_k(log 1/K + log p_k(x)), while the manager and encoders
    remain arbitrary (non-trivial proposals over k and z)."""
    torch.manual_seed(seed)
    m = MoEVAE(model_cfg(experts=k, latent_dim=latent, hidden=5, likelihood="bernoulli"), n_pixels=d)
    with torch.no_grad():
        m.decoders.layers[1].weight.zero_()
        m.decoders.layers[1].bias.normal_(0, 2)
    c = m.decoders.layers[1].bias[:, 0]  # (K, D) logits
    return m, c


def test_iw_estimator_recovers_exact_log_likelihood():
    m, c = known_model()
    x = torch.bernoulli(torch.full((4, 12), 0.5), generator=torch.Generator().manual_seed(1))
    log_pk = -torch.nn.functional.binary_cross_entropy_with_logits(
        c[:, None, :].expand(3, 4, 12), x.expand(3, 4, 12), reduction="none").sum(-1)  # (K, B)
    exact = torch.logsumexp(log_pk - math.log(3), 0)
    torch.manual_seed(0)
    est = iw_log_likelihood(m, x, n_samples=20_000, chunk=4_000)
    torch.testing.assert_close(est.float(), exact, atol=0.05, rtol=0)


def test_iw_bound_tightens_with_more_samples():
    torch.manual_seed(0)
    m = MoEVAE(model_cfg(experts=3, latent_dim=2, hidden=8, likelihood="bernoulli"), n_pixels=20)
    x = torch.bernoulli(torch.full((64, 20), 0.3))
    one = iw_log_likelihood(m, x, 1, 1).mean()
    many = iw_log_likelihood(m, x, 500, 100).mean()
    assert many > one  # E[log mean w] increases with S (Burda et al., Thm 1)


def test_chunking_does_not_change_the_estimate():
    m, _ = known_model(seed=3)
    x = torch.bernoulli(torch.full((3, 12), 0.5))
    torch.manual_seed(5)
    a = iw_log_likelihood(m, x, 300, 300)
    torch.manual_seed(5)
    b = iw_log_likelihood(m, x, 300, 300)
    torch.testing.assert_close(a, b)
    torch.manual_seed(5)
    c = iw_log_likelihood(m, x, 300, 70)
    assert torch.allclose(a, c, atol=0.5)  # same estimator, other draws


@pytest.mark.parametrize("kind", ["vae", "mmd_vae", "gmm_vae"])
def test_iw_estimator_is_exact_for_every_one_latent_kind(kind):
    """Decoder ignoring z: p(x) = prod Bernoulli(x; sigmoid(c)) whatever the prior, while
    the encoder proposal (and, for mmd_vae, the fixed-width proposal) stays arbitrary."""
    torch.manual_seed(0)
    m = build_model(model_cfg(kind=kind, latent_dim=2, hidden=5, components=3,
                                likelihood="bernoulli", mmd_proposal_std=0.7))
    with torch.no_grad():
        m.decoder.layers[1].weight.zero_()
        m.decoder.layers[1].bias.normal_(0, 2)
    c = m.decoder.layers[1].bias[0, 0]  # (D,) logits
    x = torch.bernoulli(torch.full((4, 784), 0.5), generator=torch.Generator().manual_seed(1))
    exact = -torch.nn.functional.binary_cross_entropy_with_logits(
        c.expand(4, 784), x, reduction="none").sum(-1)
    est = iw_log_likelihood(m, x, n_samples=40_000, chunk=10_000)
    torch.testing.assert_close(est.float(), exact, atol=0.08, rtol=0)  # seen: <= 0.03


def test_kinds_without_a_cluster_variable_get_kmeans_on_their_codes():
    """Two well-separated groups of images -> k-means on the VAE's codes separates them,
    with no labels involved; a kind with a cluster variable uses its argmax instead."""
    torch.manual_seed(0)
    m = build_model(model_cfg(kind="vae", latent_dim=2, hidden=8))
    x = torch.cat([torch.zeros(50, 784), torch.ones(50, 784)])
    x[:, :10] = torch.rand(100, 10)  # a little spread inside each group
    clusters, n, codes = assign_clusters(m, x, batch_size=30, seed=0)
    assert n == 10 and codes.shape == (100, 2)
    assert set(clusters[:50]).isdisjoint(clusters[50:])
    g = build_model(model_cfg(kind="gmm_vae", latent_dim=2, hidden=8, components=4))
    clusters, n, _ = assign_clusters(g, x, batch_size=30, seed=0)
    assert n == 4 and np.array_equal(clusters, g.cluster_probs(x).argmax(1).numpy())


def test_the_log_likelihood_over_two_ray_tasks_is_the_single_process_one(ray_session):
    """evaluate.workers splits the test images over Ray tasks; each batch draws from its
    own seed, so the split changes nothing beyond floating-point order."""
    import dataclasses

    from pipeline.evaluation.config import EvaluateConfig
    from pipeline.evaluation.likelihood import log_likelihoods

    torch.manual_seed(0)
    model = build_model(model_cfg(experts=3, latent_dim=4, hidden=16, likelihood="bernoulli")).eval()
    x = torch.bernoulli(torch.rand(130, 784, generator=torch.Generator().manual_seed(2)))
    cfg = EvaluateConfig(iw_samples=64, iw_chunk=32, batch_size=20, use_gpu=False)  # 7 batches
    lines = []
    one = log_likelihoods(model, x, cfg, log=lines.append)
    two = log_likelihoods(model, x, dataclasses.replace(cfg, workers=2), log=lines.append)
    four = log_likelihoods(model, x, dataclasses.replace(cfg, workers=4), log=lines.append)  # 1-2 batches each
    assert any("7 batches over 2 Ray task(s)" in line for line in lines)
    assert one.shape == two.shape == four.shape == (130,)
    # float32 sums in another thread count: equal to about 1e-8 relative (seen: 4e-6 of 550 nats)
    assert torch.allclose(one, two, rtol=1e-7, atol=0) and torch.allclose(one, four, rtol=1e-7, atol=0)
    # so well within the single-process estimate's Monte Carlo standard error
    sem = float(one.std() / math.sqrt(len(one)))
    assert abs(float(one.mean() - two.mean())) < 0.01 * sem
    # and the agreement is not vacuous: another seed draws other samples
    other = log_likelihoods(model, x, dataclasses.replace(cfg, seed=1), log=lines.append)
    assert not torch.allclose(one, other, atol=1e-3)
