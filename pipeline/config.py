"""Typed configuration built from params.yaml.

Every section of params.yaml maps onto one dataclass. Unknown keys and out-of-range
values raise `ConfigError` with a one-line message that names the key and the fix, so a
typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml


from pipeline.checks import ConfigError, _check  # noqa: F401 (re-exported)
from pipeline.config_runs import CompareConfig, ResultsConfig, TuneConfig


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion_mnist (same IDX format, 28x28, 10 classes)
    raw_dir: str = "data/raw"  # where the four IDX .gz files live (downloaded if absent)
    shards: int = 4  # Parquet shards per split; each training worker reads shards[rank::world]
    train_limit: Optional[int] = None  # keep only the first N training images (quick runs)

    def __post_init__(self):
        from pipeline.data import DATASET_MD5

        _check(self.dataset in DATASET_MD5, "data.dataset", self.dataset,
               f"choose one of {sorted(DATASET_MD5)}")
        _check(self.shards >= 1, "data.shards", self.shards, "use an integer >= 1")
        _check(self.train_limit is None or self.train_limit >= 1, "data.train_limit",
               self.train_limit, "use null (all 60000 images) or an integer >= 1")


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "moe_vae"  # a name from pipeline.models.REGISTRY
    encoder: str = "mlp"  # mlp (the seeds) | conv (two stride-2 convs, as the MMD-VAE seed)
    experts: int = 10  # K, expert VAEs behind the manager (moe_vae)
    latent_dim: int = 20  # size of z
    hidden: int = 128  # width of the hidden layer of every MLP
    conv_channels: int = 32  # channels of the first conv layer (the second has twice as many)
    activation: str = "sigmoid"  # sigmoid (the seeds) | relu | elu | tanh
    balancing_weight: float = 0.1  # lambda in front of Var_k(sum_batch p_k) (moe_vae)
    components: int = 10  # C, Gaussians in the learnable mixture prior (gmm_vae)
    learn_prior_weights: bool = True  # learn the mixture weights pi too (gmm_vae)
    mmd_weight: float = 1000.0  # weight of the MMD term (mmd_vae)
    mmd_proposal_std: float = 0.2  # std of the N(f(x), s^2 I) proposal for log p(x) (mmd_vae)
    importance_samples: int = 1  # S: train on the IWAE bound with S samples (vae, gmm_vae); 1 = ELBO
    likelihood: str = "gaussian"  # gaussian (fixed std) | bernoulli (dynamic binarization)
    gaussian_std: float = 0.5  # std of the gaussian likelihood, on [0, 1] pixels
    # moe_vae manager (pipeline/models/manager.py); the defaults are the seeds' manager
    manager_encoder: Optional[str] = None  # mlp | conv; null = encoder
    manager_hidden: Any = None  # list of hidden widths; null = [hidden], the experts' block
    manager_activation: Optional[str] = None  # null = activation
    manager_batchnorm: bool = False  # BatchNorm after each hidden layer (manager_hidden only)
    manager_input: str = "sample"  # sample: the likelihood's view of x | grey: the grey pixels
    entropy_weight: float = 0.0  # weight of H(Y|X): confident manager choices
    marginal_entropy_weight: float = 0.0  # weight of -H(Y): balanced choices over the batch
    consistency_weight: float = 0.0  # weight of KL(p(k|x) || p(k|x + r_adv)) (VAT)
    consistency_eps: float = 1.5  # L2 norm of the adversarial perturbation r_adv
    augment_weight: float = 0.0  # weight of KL(p(k|x) || p(k|random affine warp of x))
    manager_warmup_epochs: int = 0  # first epochs: expert losses send no gradient to the manager
    top_k: Optional[int] = None  # null: every expert on every image; k: each image's top-k only

    def __post_init__(self):
        from pipeline.models import REGISTRY  # late import: models import this module
        from pipeline.models.blocks import ACTIVATION_MODULES as ACTIVATIONS

        _check(self.kind in REGISTRY, "model.kind", self.kind, f"choose one of {sorted(REGISTRY)}")
        _check(self.encoder in ("mlp", "conv"), "model.encoder", self.encoder, "choose 'mlp' or 'conv'")
        _check(self.experts >= 1, "model.experts", self.experts, "K must be an integer >= 1")
        _check(self.components >= 1, "model.components", self.components, "use an integer >= 1")
        _check(self.conv_channels >= 1, "model.conv_channels", self.conv_channels,
               "use an integer >= 1")
        for key in ("mmd_weight", "mmd_proposal_std"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value > 0, f"model.{key}", value, "use a number > 0")
        _check(self.latent_dim >= 1, "model.latent_dim", self.latent_dim, "use an integer >= 1")
        _check(self.hidden >= 1, "model.hidden", self.hidden, "use an integer >= 1")
        _check(self.activation in ACTIVATIONS, "model.activation", self.activation,
               f"choose one of {sorted(ACTIVATIONS)}")
        _check(math.isfinite(self.balancing_weight) and self.balancing_weight >= 0,
               "model.balancing_weight", self.balancing_weight, "use a finite number >= 0")
        _check(isinstance(self.importance_samples, int) and not isinstance(self.importance_samples, bool)
               and self.importance_samples >= 1, "model.importance_samples", self.importance_samples,
               "use an integer >= 1 (1: the ELBO)")
        _check(self.importance_samples == 1 or self.kind in ("vae", "gmm_vae"), "model.importance_samples",
               self.importance_samples, f"the IWAE bound trains vae and gmm_vae only, not {self.kind}; use 1")
        _check(self.likelihood in ("gaussian", "bernoulli"), "model.likelihood",
               self.likelihood, "choose 'gaussian' or 'bernoulli'")
        _check(math.isfinite(self.gaussian_std) and self.gaussian_std > 0,
               "model.gaussian_std", self.gaussian_std, "use a number > 0")
        self._check_manager(ACTIVATIONS)

    def _check_manager(self, activations) -> None:
        widths = self.manager_hidden
        _check(widths is None or (isinstance(widths, (list, tuple)) and len(widths) > 0 and all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)),
            "model.manager_hidden", widths, "use null or a non-empty list of integers >= 1")
        if widths is not None:
            object.__setattr__(self, "manager_hidden", tuple(widths))
        _check(self.manager_encoder in (None, "mlp", "conv"), "model.manager_encoder",
               self.manager_encoder, "use null (= model.encoder), 'mlp' or 'conv'")
        _check(self.manager_activation is None or self.manager_activation in activations,
               "model.manager_activation", self.manager_activation,
               f"use null or one of {sorted(activations)}")
        for key in ("entropy_weight", "marginal_entropy_weight", "consistency_weight",
                    "augment_weight"):
            value = getattr(self, key)
            _check(math.isfinite(value) and value >= 0, f"model.{key}", value, "use a number >= 0")
        _check(math.isfinite(self.consistency_eps) and self.consistency_eps > 0,
               "model.consistency_eps", self.consistency_eps, "use a number > 0")
        _check(self.manager_input in ("sample", "grey"), "model.manager_input", self.manager_input,
               "use 'sample' (the manager reads what the experts model) or 'grey'")
        _check(self.manager_input == "sample" or (self.kind == "moe_vae" and self.likelihood == "bernoulli"),
               "model.manager_input", self.manager_input, "a grey manager input needs model.kind: "
               "moe_vae and model.likelihood: bernoulli (otherwise sample is grey); use 'sample'")
        _check(self.manager_warmup_epochs >= 0, "model.manager_warmup_epochs",
               self.manager_warmup_epochs, "use an integer >= 0 (0: no warm-up)")
        _check(self.top_k is None or (isinstance(self.top_k, int) and not isinstance(self.top_k, bool)
                                     and 1 <= self.top_k <= self.experts),
               "model.top_k", self.top_k, f"use null (dense) or an integer in 1..{self.experts} (model.experts)")
        _check(self.top_k is None or self.encoder == "mlp", "model.top_k", self.top_k,
               "sparse routing runs MLP experts only; set model.encoder: mlp or model.top_k: null")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 100  # global batch, split evenly over the workers
    lr: float = 1e-3  # Adam
    seed: int = 0
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: Union[bool, str] = "auto"  # true | false | auto (GPUs when Ray has them)
    storage_path: str = ".ray_results"  # Ray Train checkpoints; shared storage on a cluster
    max_failures: int = 0  # Ray Train FailureConfig: worker restarts before giving up
    restarts: int = 1  # candidate initialisations; the most informative clustering is kept
    restart_epochs: int = 1  # epochs each candidate trains before the choice (restarts.py)

    def __post_init__(self):
        _check(self.epochs >= 1, "train.epochs", self.epochs, "use an integer >= 1")
        _check(self.num_workers >= 1, "train.num_workers", self.num_workers, "use an integer >= 1")
        _check(self.batch_size >= self.num_workers and self.batch_size % self.num_workers == 0,
               "train.batch_size", self.batch_size,
               f"use a multiple of train.num_workers={self.num_workers} (it is the global batch)")
        _check(math.isfinite(self.lr) and self.lr > 0, "train.lr", self.lr, "use a number > 0")
        _check(self.use_gpu in (True, False, "auto"), "train.use_gpu", self.use_gpu,
               "use true, false or auto")
        _check(self.max_failures >= -1, "train.max_failures", self.max_failures,
               "use -1 (retry forever), 0 or a positive integer")
        _check(self.restarts >= 1, "train.restarts", self.restarts, "use an integer >= 1 (1 = no restarts)")
        _check(1 <= self.restart_epochs <= self.epochs, "train.restart_epochs", self.restart_epochs,
               f"use an integer from 1 to train.epochs={self.epochs}")


@dataclass(frozen=True)
class EvaluateConfig:
    iw_samples: int = 5000  # importance samples per test image for log p(x)
    iw_chunk: int = 500  # samples decoded at once (memory/speed trade-off)
    batch_size: int = 100  # test images per evaluation batch
    seed: int = 0  # seeds the test-set binarization and the Monte Carlo estimates
    ll_limit: Optional[int] = None  # estimate log p(x) on the first N test images only

    def __post_init__(self):
        _check(self.iw_samples >= 1, "evaluate.iw_samples", self.iw_samples, "use an integer >= 1")
        _check(self.iw_chunk >= 1, "evaluate.iw_chunk", self.iw_chunk, "use an integer >= 1")
        _check(self.batch_size >= 1, "evaluate.batch_size", self.batch_size, "use an integer >= 1")
        _check(self.ll_limit is None or self.ll_limit >= 1, "evaluate.ll_limit", self.ll_limit,
               "use null (whole test set) or an integer >= 1")


CLUSTER_KINDS = ("moe_vae", "gmm_vae")  # kinds with a cluster variable p(k|x)


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)

    def __post_init__(self):
        _check(self.train.restarts == 1 or self.model.kind in CLUSTER_KINDS, "train.restarts",
               self.train.restarts, f"restarts are scored on the clusters of {list(CLUSTER_KINDS)}; "
               f"use 1 for model.kind={self.model.kind}")
        if self.tune.space:
            from pipeline.tune_space import check_space

            check_space(self)


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check a YAML scalar against a dataclass field type (ints stay ints, no bool-as-int)."""
    origin, args = get_origin(typ), get_args(typ)
    if origin is Union:
        for option in args:
            try:
                return _coerce(key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"params.yaml: {key}={value!r} has the wrong type; expected {typ}")
    if typ is type(None):
        if value is None:
            return None
    elif typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    elif typ is Any:
        return value
    raise ConfigError(f"params.yaml: {key}={value!r} has the wrong type; expected {getattr(typ, '__name__', typ)}")


def build(cls, values: Optional[dict], prefix: str):
    """Build dataclass `cls` from a params.yaml section, rejecting unknown keys."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"params.yaml: section '{prefix}' must be a mapping, got {values!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"key '{prefix}.{unknown[0]}'" if prefix else f"section '{unknown[0]}'"
        raise ConfigError(f"params.yaml: unknown {where}; known are {names}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = (build(hints[name], value, key) if dataclasses.is_dataclass(hints[name])
                        else _coerce(key, value, hints[name]))
    return cls(**kwargs)


def load_params(path: Union[str, Path] = "params.yaml", overrides: Optional[dict] = None) -> Params:
    """Read and validate params.yaml; `overrides` maps dotted keys to values (sweeps, tests)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found; run from the project root or pass --params")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    return params_from_dict(apply_overrides(raw, overrides or {}))


def apply_overrides(raw: dict, overrides: dict) -> dict:
    """A copy of the params mapping `raw` with dotted `section.key` overrides applied."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        out.setdefault(section, {})[key] = value
    return out


def compare_variant(params: Params, kind: str) -> Params:
    """The params of one compared run: compare.overrides plus model.kind = kind."""
    if kind not in params.compare.kinds:
        raise ConfigError(f"--kind {kind!r} is not in compare.kinds={list(params.compare.kinds)}; "
                          f"add it there")
    raw = apply_overrides(to_dict(params), {**params.compare.overrides, "model.kind": kind})
    return params_from_dict(raw)


def params_from_dict(raw: dict) -> Params:
    return build(Params, raw, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
