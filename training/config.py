"""Everything a training run does, in one typed config (YAML + `longctx train` flags)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from curation.config_errors import did_you_mean, validation_line, where


class TrainConfig(BaseModel):
    """`longctx train`: train a LLaMA-style model on one stage's shards."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("toy", description="model preset: toy, tiny, 1b, llama2-7b (see training/model.py)")
    model_overrides: dict[str, Any] = Field(default_factory=dict, description="ModelConfig fields to override (YAML only)")
    rope_theta: float | None = Field(None, gt=0, description="RoPE theta for this stage (LWM: 1e6 at 32K .. 5e7 at 1M); None keeps the preset's")
    data: str = Field("", description="stage folder of shards, e.g. out/books/4k (local or fsspec URL), or a mixture out/books/32k@0.8,out/qa/32k@0.2")
    out: str = Field("", description="run folder: checkpoints/, metrics.jsonl, config.yaml")
    init_from: str | None = Field(None, description="params to start from: a run's checkpoints/final or a Hugging Face LLaMA folder")
    vision_layout: Literal["separate", "unified"] | None = Field(
        None, description="vision vocabulary: separate (own 8448-id table + head, LWM) or unified (8196 ids after the text ones); "
        "None keeps init_from's (text-only for a fresh model). A text checkpoint grows the new tables")
    vision_init: Literal["normal", "text_mean"] = Field(
        "normal", description="new vision rows of a text checkpoint: normal(0, initializer_range) or the mean text row plus that noise")
    text_loss_weight: float | None = Field(None, ge=0, description="loss = text_w x text CE + vision_w x vision CE, each averaged over its own positions; None: 0.5 with vision (LWM), 1.0 text-only")
    vision_loss_weight: float | None = Field(None, ge=0, description="see text_loss_weight; None: 0.5 with a vision vocabulary")
    seq_len: int = Field(4096, ge=1, description="sequence length; must equal the shards' stage length")
    global_batch: int = Field(8, ge=1, description="rows per optimiser step (across all hosts), whatever grad_accum is")
    grad_accum: int = Field(1, ge=1, description="split each step's global_batch rows into this many micro-batches run one after "
                            "another (less activation memory, same update); must divide global_batch")
    steps: int = Field(100, ge=1, description="optimiser steps")
    lr: float = Field(3e-4, ge=0, description="peak learning rate")
    warmup_steps: int = Field(10, ge=0, description="linear warmup steps")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after warmup: cosine decay to end_lr_ratio x lr, or constant")
    end_lr_ratio: float = Field(0.1, ge=0, description="final learning rate as a fraction of lr (cosine)")
    b1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    b2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    grad_clip: float = Field(1.0, gt=0, description="global gradient norm clip")
    seed: int = Field(0, description="seed of parameter init and data order")
    mesh: str = Field("dp=1,fsdp=-1,tp=1,sp=1", description="device mesh, e.g. dp=1,fsdp=-1,tp=1,sp=8 (-1: the remaining devices)")
    state_axes: str = Field("fsdp,sp", description="mesh axes that split params, gradients and Adam moments: "
                            "fsdp,sp (ZeRO-3 over the sequence devices too, as LWM) or fsdp (sp devices keep copies)")
    attention: Literal["dense", "ring"] = Field("ring", description="ring: Blockwise RingAttention over sp; dense: reference attention")
    q_chunk: int = Field(512, ge=1, description="ring attention query block size (per device)")
    kv_chunk: int = Field(512, ge=1, description="ring attention key/value block size (per device)")
    load_balance: Literal["zigzag", "striped", "none"] = Field("zigzag", description="causal load balancing of the ring")
    loss_chunk: int = Field(1024, ge=1, description="the output layer and loss run over this many positions (per sp shard) at a time")
    tokenizer_sha256: str | None = Field(None, description="refuse shards made with another tokenizer (sha256 from the manifest)")
    allow_unfinished_data: bool = Field(False, description="train on a data folder that is not a finished job output (no "
                                        "manifest and shards missing, as a killed job leaves it), with a warning")
    resume_step: int | None = Field(None, ge=1, description="resume from this step checkpoint instead of the latest (e.g. the latest "
                                    "is corrupt); later step checkpoints are moved to checkpoints/set-aside/")
    allow_config_change: bool = Field(False, description="resume even though optimisation settings (lr, schedule, batch, "
                                      "data, ...) differ from the checkpoint's; the changes are logged")
    checkpoint_every: int = Field(50, ge=1, description="save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(3, ge=1, description="keep the last N step checkpoints")
    stop_after: int | None = Field(None, ge=1, description="leave after this many steps in this process (a later run resumes)")
    log_every: int = Field(1, ge=1, description="log metrics every N steps")
    peak_flops_per_device: float | None = Field(None, gt=0, description="for the MFU estimate; None guesses from the device kind")
    progress: bool = Field(True, description="show a progress bar")
    # Multi-process jobs (JAX's own names; see training/distributed.py).
    distributed: Literal["auto", "on", "off"] = Field(
        "auto", description="join a multi-process job with jax.distributed.initialize: auto (when coordinator_address / "
        "num_processes / process_id are given, or SLURM with several tasks, or a TPU pod is detected), on (always; JAX "
        "detects the cluster, e.g. a GCE TPU pod), off (never)")
    coordinator_address: str | None = Field(None, description="HOST:PORT of process 0's coordination service (all processes alike)")
    num_processes: int | None = Field(None, ge=1, description="processes in the job (all processes alike); None: detected")
    process_id: int | None = Field(None, ge=0, description="this process's index, 0..num_processes-1; None: detected")
    initialization_timeout: int = Field(300, ge=1, description="seconds to wait for every process to join before failing")

    @field_validator("mesh")
    @classmethod
    def mesh_is_parseable(cls, mesh: str) -> str:
        """Axis names and sizes are checked here, with the rest of the config; whether they fit
        the devices is checked when the mesh is made."""
        from training.mesh import parse_mesh

        parse_mesh(mesh)  # MeshError is a ValueError: one line naming the entry
        return mesh

    @model_validator(mode="after")
    def model_is_buildable(self) -> TrainConfig:
        """The preset and its overrides make a model: a misspelled preset or override key, or an
        override the model refuses, is one line here, before any command builds anything."""
        _check_model(self.model, self.model_overrides, check_values=self.init_from is None)
        return self

    @model_validator(mode="after")
    def distributed_off_is_one_process(self) -> TrainConfig:
        """`distributed: off` never joins a job: the process trains alone whatever coordinator,
        process count or index it is given, so two such processes would write one run folder at
        once. Those keys are refused with it (auto and on use them)."""
        from training.distributed import check_off

        if self.distributed == "off":
            check_off(self.coordinator_address, self.num_processes, self.process_id)
        return self

    @model_validator(mode="after")
    def vision_settings_apply(self, info: ValidationInfo) -> TrainConfig:
        """text_loss_weight, vision_loss_weight and vision_init act on a model with a vision
        vocabulary only. Refused here when the model is surely text-only: no vision_layout and no
        init_from (whose checkpoint may bring one: see `check_vision_settings`). A stage plan
        checks its stages itself, knowing what each inherits (context {"plan": True})."""
        if (info.context or {}).get("plan") or self.init_from is not None or self.vision_layout is not None:
            return self
        if _preset_layout(self.model, self.model_overrides) == "none":
            check_vision_settings(self, "none")  # the default message: no vision_layout, no init_from
        return self


# Keys that act on a vision vocabulary only, with their no-op values.
VISION_ONLY_DEFAULTS: dict[str, Any] = {"text_loss_weight": None, "vision_loss_weight": None, "vision_init": "normal"}


def vision_only_keys(values: dict[str, Any]) -> list[str]:
    """The vision-only keys `values` sets to something other than their no-op default."""
    return [key for key, default in VISION_ONLY_DEFAULTS.items() if key in values and values[key] != default]


def check_vision_settings(config: TrainConfig, vision_layout: str, model: str = "the model (no vision_layout, no init_from)") -> None:
    """ValueError (one line) when the model (`vision_layout`: the effective model's, "none" for a
    text-only one) has no vision vocabulary but `config` sets keys that act only on one. With
    init_from the checkpoint decides, so the trainer calls it once the model is known, e.g.
    `check_vision_settings(config, model_cfg.vision_layout, f"the model of init_from {config.init_from}")`."""
    if vision_layout != "none":
        return
    keys = vision_only_keys(config.model_dump(include=set(VISION_ONLY_DEFAULTS)))
    if keys:
        flags = ", ".join("--" + k.replace("_", "-") for k in keys)
        raise ValueError(_vision_keys_message(keys, model, f" ({flags})", " (--vision-layout separate|unified)"))


def _vision_keys_message(places: list[str], model: str, flags: str = "", layout_flag: str = "") -> str:
    return (f"{', '.join(places)} {'acts' if len(places) == 1 else 'act'} on a vision vocabulary only, but {model} is "
            f"text-only: remove {'it' if len(places) == 1 else 'them'}{flags}, or set vision_layout{layout_flag}")


def _preset_layout(name: str, overrides: dict[str, Any]) -> str:
    """The vision layout of preset `name` with `overrides` (model_overrides may give one)."""
    from training.model import ModelConfig

    try:
        return ModelConfig.preset(name).with_(**overrides).vision_layout
    except (ValueError, TypeError, NotImplementedError):  # model_is_buildable says what is wrong
        return str(overrides.get("vision_layout", "none"))


def _check_model(name: str, overrides: dict[str, Any], check_values: bool = True) -> None:
    """ValueError (one line) unless preset `name` with `overrides` is a ModelConfig. training.model
    (JAX) is imported only here, when a train config is checked, not by every command's parser.
    Each value is checked on its own always, their combination on the preset only without
    init_from (which brings its own shapes)."""
    import dataclasses

    from training.model import PRESETS, ModelConfig, value_problem

    if name not in PRESETS:
        raise ValueError(f"model: unknown preset {name!r}{did_you_mean(name, list(PRESETS))}; "
                         f"presets: {', '.join(PRESETS)}")
    fields = [f.name for f in dataclasses.fields(ModelConfig)]
    for key in overrides:
        if key not in fields:
            raise ValueError(f"model_overrides: unknown key {key!r}{did_you_mean(key, fields)}")
    try:
        problem = value_problem(overrides)  # each value on its own, whatever model init_from brings
    except NotImplementedError as err:  # e.g. a rope_scaling type we do not have
        problem = str(err)
    if problem:
        raise ValueError(f"model_overrides: {problem}")
    if not check_values:
        return
    try:
        ModelConfig.preset(name).with_(**overrides)
    except (ValueError, NotImplementedError) as err:
        raise ValueError(f"model_overrides: {err}") from None
    except TypeError as err:  # e.g. a string where the model needs a number
        raise ValueError(f"model_overrides: a value of the wrong type ({err})") from None


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    data: str
    overrides: dict[str, Any] = Field(default_factory=dict)


class StagePlan(BaseModel):
    """`longctx train-stages`: stages trained in order, each initialised from the previous one's params."""

    model_config = ConfigDict(extra="forbid")
    out: str
    init_from: str | None = None
    topology: str | None = Field(None, description="the slice the stages are laid out for (e.g. v5p:4x8x8); "
                                 "`longctx plan --plan` compiles for it when --topology is not given")
    base: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageEntry]
    eval: dict[str, Any] | None = Field(None, description="evaluate each stage at its own length when it ends "
                                        "(evals.stage_eval.EvalSection: ruler, niah, loss_by_position)")

    @classmethod
    def from_data(cls, data: Any) -> StagePlan:
        """A plan from its parsed YAML, every stage's TrainConfig checked too (so a typo in `base`
        or a stage's `overrides` stops the plan before stage 1 trains). A mistake is one line:
        `stages[0].overrides: unknown key 'step' (did you mean 'steps'?)` (a ValueError)."""
        if not isinstance(data, dict):
            raise ValueError(f"a stage plan is a YAML mapping (out:, base:, stages:), not {type(data).__name__}")
        try:
            plan = cls.model_validate(data)
        except ValidationError as err:
            raise ValueError(validation_line(err, known_keys=_known_keys)) from None
        plan.stage_configs()
        return plan

    def stage_configs(self) -> list[tuple[str, TrainConfig]]:
        self._check_plan_keys()
        configs = []
        previous = self.init_from
        for index, entry in enumerate(self.stages):
            data = {**self.base, **entry.overrides, "data": entry.data, "out": f"{self.out.rstrip('/')}/{entry.name}"}
            data["init_from"] = previous
            try:  # the plan checks the vision-only keys itself (_check_vision_keys): it knows what each stage inherits
                config = TrainConfig.model_validate(data, context={"plan": True})
            except ValidationError as err:
                raise ValueError(validation_line(err, lambda loc: self._origin(index, loc), _known_keys)) from None
            configs.append((entry.name, config))
            previous = f"{config.out}/checkpoints/final"
        self._check_vision_keys(configs)
        return configs

    def _check_plan_keys(self) -> None:
        """out, data and init_from are the plan's own (each stage's are made from its out, the
        stage entry's data and the previous stage): given in base or a stage's overrides they
        were dropped without a word. Refused, naming where each belongs."""
        sections = [(("base",), self.base)] + [(("stages", i, "overrides"), e.overrides) for i, e in enumerate(self.stages)]
        for place, keys in sections:
            for key in ("out", "data", "init_from"):
                if key in keys:
                    raise ValueError(f"{where((*place, key))}: {_PLAN_KEY_HOME[key]}")

    def _check_vision_keys(self, configs: list[tuple[str, TrainConfig]]) -> None:
        """text_loss_weight, vision_loss_weight and vision_init given where they cannot act: in a
        stage's overrides when that stage is surely text-only, in base when every stage is. A
        stage's vision layout is its own vision_layout, else the previous stage's (it starts from
        its params), else the plan's init_from's (unknown: then nothing is refused) or none."""
        layout: str | None = None if self.init_from else "none"
        text_only = []
        for index, (_, config) in enumerate(configs):
            if config.vision_layout is not None:
                layout = config.vision_layout
            elif index == 0 and layout == "none":
                layout = _preset_layout(config.model, config.model_overrides)
            text_only.append(layout == "none")
            keys = vision_only_keys(self.stages[index].overrides)
            if layout == "none" and keys:
                raise ValueError(_vision_keys_message([where(("stages", index, "overrides", k)) for k in keys],
                                                      f"stage {self.stages[index].name}'s model ({_TEXT_ONLY_STAGE})"))
        keys = vision_only_keys(self.base)
        if keys and text_only and all(text_only):
            raise ValueError(_vision_keys_message([where(("base", k)) for k in keys], f"every stage's model ({_TEXT_ONLY_STAGE})"))

    def _origin(self, index: int, loc: tuple[Any, ...]) -> tuple[Any, ...]:
        """Where in the plan a stage's merged TrainConfig got the key at `loc` from: the stage's
        overrides, else base, else the stage entry itself (data, out, init_from)."""
        if loc and loc[0] in self.stages[index].overrides:
            return ("stages", index, "overrides", *loc)
        return ("base", *loc) if loc and loc[0] in self.base else ("stages", index, *loc)


_TEXT_ONLY_STAGE = "no vision_layout in it or an earlier stage, no plan init_from"

_PLAN_KEY_HOME = {
    "out": "a plan's run folder is its top-level out: (stage NAME trains into OUT/NAME; --out overrides it); "
           "here it would be ignored: move it there",
    "data": "a stage's shards are its stage entry's data: (stages[N].data); here it would be ignored: move it there",
    "init_from": "the first stage starts from the plan's top-level init_from:, each later stage from the previous "
                 "stage's checkpoints/final; here it would be ignored: move it to the top-level init_from",
}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a place of a plan (for a `did you mean` hint)."""
    if loc in {("base",)} or (len(loc) == 3 and loc[0] == "stages" and loc[2] == "overrides"):
        return list(TrainConfig.model_fields)
    if len(loc) == 2 and loc[0] == "stages":
        return list(StageEntry.model_fields)
    return list(StagePlan.model_fields) if not loc else []
