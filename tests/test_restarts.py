"""Label-free restarts: the score, the choice, the config, and the train stage end to end."""
import math

import pytest
import torch

from pipeline.core.errors import ConfigError

from pipeline.params import params_from_dict
from pipeline.training.restarts import candidate_seed, cluster_information, select


class FixedClusters(torch.nn.Module):
    """cluster_probs(x) = the row of `table` named by x's first pixel (an image id)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float64)

    def prepare(self, grey, generator=None):
        return grey

    def cluster_probs(self, x):
        return self.table[(x[:, 0] * 255).round().long()]


def ids(n):  # (n, 784) uint8 images whose first pixel is their row id
    pixels = torch.zeros(n, 784, dtype=torch.uint8)
    pixels[:, 0] = torch.arange(n)
    return pixels


def test_information_is_log_k_for_confident_balanced_clusters_and_zero_without_a_choice():
    k = 4
    confident = FixedClusters(torch.eye(k).repeat(3, 1).tolist())  # 12 images, 3 per cluster
    assert cluster_information(confident, ids(12)) == pytest.approx(math.log(k))
    collapsed = FixedClusters([[1.0, 0, 0, 0]] * 12)  # everything in one cluster
    assert cluster_information(collapsed, ids(12)) == pytest.approx(0.0, abs=1e-9)
    unsure = FixedClusters([[0.25] * 4] * 12)  # balanced but no image is decided
    assert cluster_information(unsure, ids(12)) == pytest.approx(0.0, abs=1e-9)
    # a merged pair and a split cluster (what a bad MoE-VAE seed does) scores lower
    merged = FixedClusters([[1, 0, 0, 0]] * 6 + [[0, 0.5, 0.5, 0]] * 3 + [[0, 0, 0, 1]] * 3)
    assert cluster_information(merged, ids(12)) < cluster_information(confident, ids(12))


def test_information_is_exact_across_scoring_chunks(monkeypatch):
    import pipeline.training.restarts as restarts

    table = torch.softmax(torch.randn(50, 5, generator=torch.Generator().manual_seed(0)), -1)
    whole = cluster_information(FixedClusters(table.tolist()), ids(50))
    monkeypatch.setattr(restarts, "SCORE_CHUNK", 7)  # 50 images in chunks of 7
    assert cluster_information(FixedClusters(table.tolist()), ids(50)) == pytest.approx(whole, rel=1e-12)


class FakeRun:
    def __init__(self, seed):
        self.seed, self.history, self.timings = seed, [], []


def run_select(scores, n_epochs=2, **kw):
    trained, lines = [], []
    kw.setdefault("log", lines.append)

    def train(run, epoch, label):
        trained.append((run.seed, epoch, label))
        run.history.append({"epoch": epoch + 1})
        run.timings.append({"epoch": epoch + 1, "seconds": 1.5})

    best, record = select(len(scores), n_epochs, 7, FakeRun, train,
                          lambda run: scores[(run.seed - 7) // candidate_seed(0, 1)], **kw)
    return best, record, trained, lines


def test_select_keeps_the_highest_score_and_counts_the_discarded_time():
    best, record, trained, lines = run_select([2.1, 2.25, 2.2])
    assert best.seed == candidate_seed(7, 1) and record["chosen"] == 1
    assert record["scores"] == [2.1, 2.25, 2.2] and record["epochs"] == 2
    assert record["discarded_seconds"] == pytest.approx(2 * 2 * 1.5)  # 2 losers x 2 epochs
    assert [t[:2] for t in trained[:2]] == [(7, 0), (7, 1)]  # candidate 0 is train.seed itself
    assert trained[0][2] == "restart 1/3 " and "keeping restart 2/3" in lines[-1]
    assert len(best.history) == 2  # the winner goes on from its own epochs


def test_select_keeps_candidate_zero_on_a_tie():
    best, record, _, _ = run_select([2.0, 2.0])
    assert best.seed == 7 and record["chosen"] == 0


def test_select_checkpoints_after_every_candidate_and_resumes_where_it_stopped():
    saved = []
    best, record, _, _ = run_select([2.1, 2.25, 2.2], save=lambda run, rec: saved.append((run.seed, rec)))
    assert [rec["scores"] for _, rec in saved] == [[2.1], [2.1, 2.25], [2.1, 2.25, 2.2]]
    assert [seed for seed, _ in saved] == [7, candidate_seed(7, 1), candidate_seed(7, 1)]  # best so far
    assert saved[-1][1] == record
    # a failure after candidate 2's score: the resumed choice trains candidate 3 only
    winner = FakeRun(candidate_seed(7, 1))
    winner.history = [{"epoch": 1, "seconds": 1.5}, {"epoch": 2, "seconds": 1.5}]
    resumed, resumed_record, trained, lines = run_select([2.1, 2.25, 2.2], resume=(winner, saved[1][1]))
    assert {seed for seed, _, _ in trained} == {candidate_seed(7, 2)}
    assert resumed is winner and resumed_record == record
    assert lines[0].startswith("resuming the choice after restart 2/3")


@pytest.mark.parametrize("train, model, match", [
    ({"restarts": 0}, {}, "train.restarts=0"),
    ({"restarts": 2, "restart_epochs": 0}, {}, "train.restart_epochs=0"),
    ({"restarts": 2, "restart_epochs": 5, "epochs": 4}, {}, "from 1 to train.epochs=4"),
    ({"restarts": 2}, {"kind": "vae"}, "which model.kind=vae has not; use 1"),
])
def test_bad_restart_params_are_one_line_errors(train, model, match):
    with pytest.raises(ConfigError, match=match):
        params_from_dict({"train": train, "model": model})


def test_a_sweep_refuses_restarts_before_ray(tiny_shards):
    from pipeline.sweep.run import run_sweep

    params = params_from_dict({"train": {"restarts": 2}})
    with pytest.raises(ConfigError, match="train.restarts=2 is for the train stage"):
        run_sweep(params, tiny_shards, log=lambda s: None)
    with pytest.raises(ConfigError, match="tune.space='train.restarts'"):
        params_from_dict({"tune": {"space": {"train.restarts": {"choice": [1, 2]}}}})


def test_train_stage_keeps_the_most_informative_of_two_ddp_candidates(ray_session, tiny_shards, tmp_path):
    from pipeline.training.driver import fit

    params = params_from_dict({
        "model": {"moe_vae": {"experts": 3}, "net": {"latent_dim": 4, "hidden": 32}},
        "train": {"epochs": 2, "batch_size": 40, "lr": 3e-3, "num_workers": 2, "restarts": 2,
                  "restart_epochs": 1, "storage_path": str(tmp_path / "ray_results")},
    })
    lines = []
    state = fit(params, tiny_shards, log=lines.append)
    record = state["restarts"]
    assert len(record["scores"]) == 2 and record["epochs"] == 1
    assert record["chosen"] == max(range(2), key=lambda r: (record["scores"][r], -r))
    assert all(0 <= s <= math.log(3) + 1e-9 for s in record["scores"])
    assert record["discarded_seconds"] > 0
    assert [r["epoch"] for r in state["history"]] == [1, 2]
    assert len(state["snapshots"]) == 2  # the winner's own first epoch included
    assert state["seed"] == candidate_seed(0, record["chosen"])
    # finished: the same params resume from the last checkpoint and keep the record
    assert fit(params, tiny_shards, log=lines.append)["restarts"] == record
