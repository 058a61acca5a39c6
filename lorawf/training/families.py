"""The base-model families FluxTrainer trains, as data: which node plays which part, and what differs.

Issue 15's first step: the planner and the patcher will choose a family (``--model flux|sdxl|sd35``) instead of
assuming Flux. Every name here is checked against the node schemas lorawf bundles (FluxTrainer 639b3e8,
``tests/test_families.py``), and the facts below come from FluxTrainer's own source at that commit:

* the SDXL and SD3 graphs reuse ``FluxTrainLoop``, ``FluxTrainSave`` and ``FluxTrainEnd`` (docs/fluxtrainer.md
  §9.5); only the model selection, the ``Init*`` node and the validation settings are the family's own;
* ``nodes_sd3.py`` defines an ``SD3TrainValidate`` but does not register it (it is missing from its
  ``NODE_CLASS_MAPPINGS``): an SD3.5 graph validates with ``FluxTrainValidate``, whose ``validate`` calls the
  same ``network_trainer.sample_images``;
* ``InitSDXLLoRATraining`` takes its validation prompts as ``sample_prompts_pos`` and ``sample_prompts_neg``,
  the others as one ``sample_prompts`` (prompts separated by ``|``);
* ``InitSD3LoRATraining`` spells one input ``"training_shift "``, with a trailing space, in its schema;
* every family names its files ``{output_name}_rank{dim}_{save_dtype}`` plus kohya's ``-step{N:05d}``;
* Flux's validation settings default to 512 x 512, SDXL's and SD3's to 1024 x 1024.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFamily:
    """One base-model family: the node classes of its own and the inputs that differ between families."""

    name: str  # the --model value
    title: str  # as a user says it
    models_class: str  # selects the base model files
    models_output: str  # the type it returns, taken by the Init node's ``models_input``
    models_input: str
    model_files: tuple[str, ...]  # the model-select inputs that name files on the server
    init_class: str
    validate_class: str
    validation_settings_class: str
    prompt_inputs: tuple[str, ...]  # Init inputs that carry the validation prompts (positive first)
    default_output_name: str  # the Init node's own defaults
    default_output_dir: str
    validation_size: int = 1024  # the validation settings node's default width and height
    save_dtype: str = "bf16"  # the bundled template's Init.save_dtype (part of every file name)
    template_validation: str = "1024 x 1024"  # what the bundled template's validation settings render

    def file_name(self, output_name: str, dim: int, step: int | None = None) -> str:
        """kohya's name for a checkpoint (``step``) or the final file of ``output_name`` trained at ``dim``."""
        stem = f"{output_name}_rank{dim}_{self.save_dtype}"
        return f"{stem}-step{step:05d}.safetensors" if step is not None else f"{stem}.safetensors"


FLUX = ModelFamily(
    name="flux", title="Flux.1", models_class="FluxTrainModelSelect", models_output="TRAIN_FLUX_MODELS",
    models_input="flux_models", model_files=("transformer", "vae", "clip_l", "t5"),
    init_class="InitFluxLoRATraining", validate_class="FluxTrainValidate",
    validation_settings_class="FluxTrainValidationSettings", prompt_inputs=("sample_prompts",),
    default_output_name="flux_lora", default_output_dir="flux_trainer_output", validation_size=512,
    template_validation="512 x 512, 20 steps, guidance 3.5",
)
SDXL = ModelFamily(
    name="sdxl", title="SDXL", models_class="SDXLModelSelect", models_output="TRAIN_SDXL_MODELS",
    models_input="SDXL_models", model_files=("checkpoint",),
    init_class="InitSDXLLoRATraining", validate_class="SDXLTrainValidate",
    validation_settings_class="SDXLTrainValidationSettings",
    prompt_inputs=("sample_prompts_pos", "sample_prompts_neg"),
    default_output_name="SDXL_lora", default_output_dir="SDXL_trainer_output", save_dtype="fp16",
    template_validation="1024 x 1024, 25 steps, guidance 7, euler_a, with a negative prompt",
)
SD35 = ModelFamily(
    name="sd35", title="SD 3.5", models_class="SD3ModelSelect", models_output="TRAIN_SD3_MODELS",
    models_input="sd3_models", model_files=("transformer", "clip_l", "clip_g", "t5"),
    init_class="InitSD3LoRATraining", validate_class="FluxTrainValidate",
    validation_settings_class="SD3TrainValidationSettings", prompt_inputs=("sample_prompts",),
    default_output_name="sd35_lora", default_output_dir="sd35_trainer_output",
    template_validation="1024 x 1024, 28 steps, guidance 4.5",
)

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (FLUX, SDXL, SD35)}
DEFAULT_FAMILY = FLUX.name

#: The training backends: kijai's FluxTrainer node pack, or ComfyUI's own training nodes (comfy_extras/nodes_train).
FLUXTRAINER = "fluxtrainer"
NATIVE = "native"
TRAINERS = (FLUXTRAINER, NATIVE)
DEFAULT_TRAINER = FLUXTRAINER


def family(name: str) -> ModelFamily:
    """The family called ``name``; a :class:`ValueError` that lists the choices otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}") from None
