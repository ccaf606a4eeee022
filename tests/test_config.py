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
