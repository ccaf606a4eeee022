"""params.yaml -> dataclasses: typos and out-of-range values are one-line errors."""
import pytest
import yaml

from pipeline.core.errors import ConfigError
from pipeline.paramdoc import describe, leaf_keys, reference
from pipeline.experiments.presets import load_preset
from pipeline.experiments.runs import run_params
from pipeline.params import Params, load_params, params_from_dict
from tests.conftest import ROOT


def test_repo_params_are_the_best_recipe_and_older_recipes_a_preset_away():
    p = load_params(ROOT / "params.yaml")
    assert p.model.kind == "moe_vae" and p.model.spec.experts == 10 and p.model.net.latent_dim == 20
    assert p.model.net.hidden == 128 and p.model.net.activation == "sigmoid"
    assert p.model.likelihood.name == "bernoulli" and p.train.epochs == 23
    # the main job is moe_imsat_top1_imsat_aug: IMSAT's MLP manager on grey pixels, top-1
    # experts, and from epoch 16 on a manager that keeps its choice under random warps
    m = p.model.moe_vae.manager
    assert p.model.moe_vae.top_k == 1
    assert (m.encoder, m.hidden, m.batchnorm, m.input, m.consistency_radius, m.augment_weight) == \
        ("mlp", (1200, 1200), True, "grey", "knn", 300)
    assert (m.augment_from, m.augment_shear, m.augment_stroke) == (15, 0.3, 0.7)
    assert (m.activation, m.entropy_weight, m.marginal_entropy_weight, m.consistency_weight) == \
        ("relu", 10, 40, 100)
    # the recipe the main job ran before, and the seeds' own, are one preset away each
    old = run_params(p, load_preset("moe_imsat", ROOT / "params"), 0)
    om = old.model.moe_vae.manager
    assert old.model.moe_vae.top_k is None and old.train.epochs == 10
    assert (om.encoder, om.hidden, om.batchnorm, om.input, om.consistency_radius, om.augment_weight) == \
        ("conv", None, False, "sample", "fixed", 100)
    seeds = run_params(p, load_preset("moe_seed", ROOT / "params"), 0)
    assert seeds.model.moe_vae.manager == type(m)() and seeds.model.moe_vae.balancing_weight == 0.1
    assert seeds.model.moe_vae.top_k is None and seeds.train.epochs == 10


def test_params_yaml_lists_every_key():
    """params.yaml spells out every key, so a user sees what can be set."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = set()

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and key != "tune.space":
                walk(v, key)
            else:
                listed.add(key)
    walk(raw, "")
    assert set(leaf_keys(Params())) == listed


def test_parameter_reference_is_up_to_date():
    """docs/params.md is generated from the dataclasses' field docs: regenerate it with
    `python -m pipeline.paramdoc docs/params.md` when this fails."""
    assert (ROOT / "docs" / "params.md").read_text() == reference()
    assert all(doc for _, _, _, doc in describe(Params()))  # every field says what it does
    assert "`neighbours.k` | int | `10`" in reference()


@pytest.mark.parametrize("raw, needle", [
    ({"model": {"moe_vae": {"expert": 3}}}, "unknown key 'model.moe_vae.expert'"),
    ({"model": {"experts": 3}}, "unknown key 'model.experts'"),
    ({"modle": {}}, "unknown section 'modle'"),
    ({"model": {"moe_vae": {"experts": 0}}}, "model.moe_vae.experts=0"),
    ({"model": {"net": {"latent_dim": 0}}}, "model.net.latent_dim=0"),
    ({"model": {"moe_vae": {"balancing_weight": -0.1}}}, "model.moe_vae.balancing_weight=-0.1"),
    ({"model": {"kind": "gan"}}, "model.kind='gan'"),
    ({"model": {"likelihood": {"name": "poisson"}}}, "model.likelihood.name='poisson'"),
    ({"model": {"moe_vae": {"experts": 2.5}}}, "model.moe_vae.experts=2.5"),
    ({"train": {"epochs": True}}, "train.epochs=True"),
    ({"train": {"num_workers": 3, "batch_size": 100}}, "train.batch_size=100"),
    ({"train": {"use_gpu": "yes"}}, "train.use_gpu='yes'"),
    ({"data": {"shards": 0}}, "data.shards=0"),
    ({"evaluate": {"iw_samples": 0}}, "evaluate.iw_samples=0"),
    ({"data": {"dataset": "cifar10"}}, "data.dataset='cifar10'"),
    ({"model": {"net": {"encoder": "resnet"}}}, "model.net.encoder='resnet'"),
    ({"model": {"gmm_vae": {"components": 0}}}, "model.gmm_vae.components=0"),
    ({"model": {"mmd_vae": {"proposal_std": 0}}}, "model.mmd_vae.proposal_std=0"),
    ({"model": {"gmm_vae": {"learn_prior_weights": "yes"}}}, "model.gmm_vae.learn_prior_weights='yes'"),
    ({"model": {"moe_vae": {"manager": {"hidden": [0]}}}}, "model.moe_vae.manager.hidden=[0]"),
    ({"model": {"moe_vae": {"manager": {"hidden": 128}}}}, "model.moe_vae.manager.hidden=128"),
    ({"model": {"moe_vae": {"manager": {"activation": "gelu"}}}}, "model.moe_vae.manager.activation='gelu'"),
    ({"model": {"moe_vae": {"manager": {"consistency_weight": -1}}}}, "model.moe_vae.manager.consistency_weight=-1.0"),
    ({"model": {"moe_vae": {"manager": {"consistency_eps": 0}}}}, "model.moe_vae.manager.consistency_eps=0.0"),
    ({"model": {"moe_vae": {"top_k": 11}}}, "model.moe_vae.top_k=11"),
    ({"model": {"moe_vae": {"manager": {"input": "rgb"}}}}, "model.moe_vae.manager.input='rgb'"),
    ({"model": {"moe_vae": {"manager": {"input": "grey"}}}}, "model.likelihood.name: bernoulli"),
    ({"model": {"moe_vae": {"top_k": 2}, "net": {"encoder": "conv"}}}, "model.moe_vae.top_k=2"),
    ({"model": {"vae": {"importance_samples": 0}}}, "model.vae.importance_samples=0"),
    ({"model": {"moe_vae": {"importance_samples": 5}}}, "unknown key 'model.moe_vae.importance_samples'"),
    ({"model": {"mmd_vae": {"importance_samples": 5}}}, "unknown key 'model.mmd_vae.importance_samples'"),
    ({"train": {"restarts": 2}, "model": {"kind": "vae"}}, "train.restarts=2"),
    ({"tune": {"space": {"model.kind": {"choice": ["vae"]}}}}, "tune.space='model.kind'"),
    ({"tune": {"metric": "acc"}}, "tune.metric='acc'"),
    ({"neighbours": {"k": 0}}, "neighbours.k=0"),
    ({"compare": {"presets": ["vae"]}}, "unknown section 'compare'"),
])
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        params_from_dict(raw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_a_kind_rule_applies_only_to_the_active_kind():
    """top_k with conv blocks is the MoE-VAE's rule: a vae with the same blocks is fine."""
    p = params_from_dict({"model": {"kind": "vae", "moe_vae": {"top_k": 2}, "net": {"encoder": "conv"}}})
    assert p.model.kind == "vae"


def test_yaml_scientific_notation_is_a_float(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load_params(f).train.lr == pytest.approx(1e-3)


def test_yaml_syntax_error_is_one_line_with_its_place(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  lr: [0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_params(f)
    assert "p.yaml: line " in str(e.value) and "column" in str(e.value) and "\n" not in str(e.value)


def test_overrides_any_depth_and_defaults():
    assert params_from_dict({}) == Params()
    p = load_params(ROOT / "params.yaml", overrides={"model.moe_vae.experts": 3,
                                                     "model.moe_vae.manager.entropy_weight": 1})
    assert p.model.moe_vae.experts == 3 and p.model.moe_vae.manager.entropy_weight == 1
    assert p.model.moe_vae.manager.encoder == "mlp"  # siblings keep their values
    whole = load_params(ROOT / "params.yaml", overrides={"model.moe_vae.manager": {}})
    assert whole.model.moe_vae.manager.encoder is None  # a mapping replaces the subsection


def test_train_stage_depends_on_the_params_that_change_its_output():
    """A key missing from dvc.yaml would change the model without rerunning `train`; the
    runtime keys (where checkpoints go, retries) are left out on purpose."""
    from pipeline.params.train import RUNTIME_KEYS, TrainConfig

    listed = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"])
    want = {f"train.{k}" for k in leaf_keys(TrainConfig())} - {f"train.{k}" for k in RUNTIME_KEYS}
    assert want <= listed and not listed & {f"train.{k}" for k in RUNTIME_KEYS}
    assert not [key for key in listed if key.startswith("model")]  # models/params.yaml instead
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["model_params"]["params"] == ["model"] and "models/params.yaml" in stages["train"]["deps"]


def test_the_active_kinds_params_change_with_its_block_alone():
    """What the model_params stage writes for train: another kind's block moves nothing."""
    from pipeline.params import active_model

    base = load_params(ROOT / "params.yaml")
    other = load_params(ROOT / "params.yaml", overrides={"model.vae.importance_samples": 7,
                                                         "model.gmm_vae.components": 3})
    mine = load_params(ROOT / "params.yaml", overrides={"model.moe_vae.balancing_weight": 1.0})
    assert active_model(other) == active_model(base) != active_model(mine)
    assert set(active_model(base)) == {"kind", "net", "likelihood", base.model.kind}


@pytest.mark.parametrize("key, value, limit", [
    ("model.net.latent_dim", 1_000_000, 4096),
    ("model.net.latent_dim", 100_000_000, 4096),
    ("model.net.hidden", 100_000, 32768),
    ("model.net.conv_channels", 5000, 2048),
    ("model.moe_vae.experts", 5000, 1000),
    ("model.moe_vae.expert_batch_scale", 1000, 500),
    ("model.moe_vae.manager.hidden", [1200, 100_000], 32768),
    ("model.hmoe_vae.sub_experts", 1000, 100),
    ("model.gmm_vae.components", 0, 1000),
    ("model.vae.importance_samples", 5000, 1000),
    ("evaluate.iw_samples", 10**6, 100_000),
    ("evaluate.iw_chunk", 10**5, 10_000),
    ("evaluate.batch_size", 10**5, 10_000),
    ("train.batch_size", 10**5, 10_000),
])
def test_a_size_param_past_its_bound_is_refused_by_name(key, value, limit):
    """Bounds far above any recipe: a typo is one line naming the key, before anything
    is allocated (an unbounded latent_dim: 1000000 grew a worker past 8 GB)."""
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", overrides={key: value})
    many = "integers" if isinstance(value, list) else "an integer"
    assert str(e.value) == f"params.yaml: {key}={value!r} is invalid; use {many} >= 1, at most {limit}"


def test_sizes_in_bounds_that_multiply_past_the_memory_are_refused_by_their_names(monkeypatch):
    from pipeline.models import size

    big = {"model.net.hidden": 4096, "model.moe_vae.experts": 100}
    monkeypatch.setattr(size, "machine_memory", lambda: 2**30)  # a 1 GiB machine
    with pytest.raises(ConfigError) as e:
        load_params(ROOT / "params.yaml", overrides=big)
    msg = str(e.value)
    assert msg.startswith("params.yaml: model.kind=moe_vae has ") and "more than this machine's 1.0 GiB" in msg
    assert "the largest: model.net.hidden=4096, model.moe_vae.experts=100" in msg
    monkeypatch.setattr(size, "machine_memory", lambda: 2**40)
    assert load_params(ROOT / "params.yaml", overrides=big).model.net.hidden == 4096
    assert load_params(ROOT / "params.yaml").model.net.hidden == 128  # the main job fits 1 GiB


def test_the_memory_check_counts_16_bytes_a_parameter_on_the_meta_device():
    import time

    from pipeline.models.registry import build_model, meta_model, model_config
    from pipeline.models.size import check_memory

    cfg = model_config({"moe_vae.experts": 2, "net.hidden": 8})
    n = sum(p.numel() for p in build_model(cfg).parameters())
    buffers = sum(b.numel() * b.element_size() for b in build_model(cfg).buffers())
    check_memory(cfg, meta_model(cfg), memory=16 * n + buffers)
    with pytest.raises(ConfigError, match=f"has {n:,} parameters"):
        check_memory(cfg, meta_model(cfg), memory=16 * n + buffers - 1)
    t0 = time.perf_counter()  # about 800 GiB of parameters, counted without allocating them
    with pytest.raises(ConfigError, match=r"53,471,155,880 parameters.*model.net.hidden=32768"):
        model_config({"net.hidden": 32768, "moe_vae.experts": 1000})
    assert time.perf_counter() - t0 < 2
