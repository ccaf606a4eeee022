"""params.yaml -> dataclasses: typos and out-of-range values are one-line errors."""
import pytest
import yaml

from pipeline.config import ConfigError, Params, load_params, params_from_dict
from tests.conftest import ROOT


def test_repo_params_load_and_match_documented_defaults():
    p = load_params(ROOT / "params.yaml")
    assert p.model.kind == "moe_vae" and p.model.experts == 10 and p.model.latent_dim == 20
    assert p.model.hidden == 128 and p.model.activation == "sigmoid"
    assert p.model.balancing_weight == 0.1 and p.train.lr == 1e-3 and p.train.batch_size == 100


def test_every_param_key_is_documented_in_readme():
    readme = (ROOT / "README.md").read_text()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = [f"{s}.{k}" for s, keys in raw.items() for k in keys if f"`{s}.{k}`" not in readme]
    assert not missing, f"README lacks {missing}"


@pytest.mark.parametrize("raw, needle", [
    ({"model": {"expert": 3}}, "unknown key 'model.expert'"),
    ({"modle": {}}, "unknown section 'modle'"),
    ({"model": {"experts": 0}}, "model.experts=0"),
    ({"model": {"latent_dim": 0}}, "model.latent_dim=0"),
    ({"model": {"balancing_weight": -0.1}}, "model.balancing_weight=-0.1"),
    ({"model": {"kind": "gan"}}, "model.kind='gan'"),
    ({"model": {"likelihood": "poisson"}}, "model.likelihood='poisson'"),
    ({"model": {"experts": 2.5}}, "model.experts=2.5"),
    ({"train": {"epochs": True}}, "train.epochs=True"),
    ({"train": {"num_workers": 3, "batch_size": 100}}, "train.batch_size=100"),
    ({"train": {"use_gpu": "yes"}}, "train.use_gpu='yes'"),
    ({"data": {"shards": 0}}, "data.shards=0"),
    ({"evaluate": {"iw_samples": 0}}, "evaluate.iw_samples=0"),
    ({"data": {"dataset": "cifar10"}}, "data.dataset='cifar10'"),
    ({"model": {"encoder": "resnet"}}, "model.encoder='resnet'"),
    ({"model": {"components": 0}}, "model.components=0"),
    ({"model": {"mmd_proposal_std": 0}}, "model.mmd_proposal_std=0"),
    ({"model": {"learn_prior_weights": "yes"}}, "model.learn_prior_weights='yes'"),
    ({"compare": {"kinds": ["vae", "vae"]}}, "compare.kinds=['vae', 'vae']"),
    ({"compare": {"kinds": ["gan"]}}, "compare.kinds=['gan']"),
    ({"compare": {"overrides": {"model.kind": "vae"}}}, "compare.overrides="),
    ({"model": {"manager_hidden": [0]}}, "model.manager_hidden=[0]"),
    ({"model": {"manager_hidden": 128}}, "model.manager_hidden=128"),
    ({"model": {"manager_activation": "gelu"}}, "model.manager_activation='gelu'"),
    ({"model": {"consistency_weight": -1}}, "model.consistency_weight=-1.0"),
    ({"model": {"consistency_eps": 0}}, "model.consistency_eps=0.0"),
    ({"model": {"top_k": 11}}, "model.top_k=11"),
    ({"model": {"manager_input": "rgb"}}, "model.manager_input='rgb'"),
    ({"model": {"manager_input": "grey"}}, "model.likelihood: bernoulli"),  # gaussian: sample is grey
    ({"model": {"manager_input": "grey", "kind": "vae", "likelihood": "bernoulli"}}, "model.kind: moe_vae"),
    ({"model": {"top_k": 2, "encoder": "conv"}}, "model.top_k=2"),
    ({"model": {"importance_samples": 0, "kind": "vae"}}, "model.importance_samples=0"),
    ({"model": {"importance_samples": 5}}, "not moe_vae; use 1"),  # the default kind
    ({"model": {"importance_samples": 5, "kind": "mmd_vae"}}, "not mmd_vae; use 1"),
    ({"results": {"presets": []}}, "results.presets=[]"),
    ({"results": {"presets": ["../etc"]}}, "results.presets=['../etc']"),
    ({"results": {"seeds": [0, 0]}}, "results.seeds=[0, 0]"),
    ({"results": {"overrides": {"epochs": 3}}}, "results.overrides="),
])
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as e:
        params_from_dict(raw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_yaml_scientific_notation_is_a_float(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("train:\n  lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load_params(f).train.lr == pytest.approx(1e-3)


def test_overrides_and_defaults():
    assert params_from_dict({}) == Params()
    p = load_params(ROOT / "params.yaml", overrides={"model.experts": 3})
    assert p.model.experts == 3


def test_compare_variant_applies_overrides_and_kind():
    from pipeline.config import compare_variant

    p = params_from_dict({"compare": {"kinds": ["vae", "gmm_vae"],
                                      "overrides": {"train.epochs": 3, "model.latent_dim": 2}}})
    v = compare_variant(p, "gmm_vae")
    assert (v.model.kind, v.train.epochs, v.model.latent_dim) == ("gmm_vae", 3, 2)
    assert v.evaluate == p.evaluate and p.model.kind == "moe_vae"  # the main run is untouched
    with pytest.raises(ConfigError, match="'moe_vae' is not in compare.kinds"):
        compare_variant(p, "moe_vae")
    typo = params_from_dict({"compare": {"overrides": {"train.epoch": 3}}})
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        compare_variant(typo, "vae")


def test_train_stage_depends_on_every_model_and_train_key():
    """A key missing from dvc.yaml would change the model without rerunning `train`."""
    import dataclasses

    from pipeline.config import ModelConfig, TrainConfig

    listed = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["train"]["params"])
    want = {f"{section}.{f.name}" for section, cls in (("model", ModelConfig), ("train", TrainConfig))
            for f in dataclasses.fields(cls)}
    assert want <= listed, f"dvc.yaml train stage lacks {sorted(want - listed)}"
