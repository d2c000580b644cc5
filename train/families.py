"""The model families lorakit trains, one record each with what the rest of the code needs to
know of it: the resolution it was trained at, the guide's images per concept, its text encoders'
key prefixes, and the names its LoRA files carry (kohya's and the modelspec standard's). Code asks
the record; it does not test for a family by name."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    native: int  # px: the resolution it was trained at
    images_per_concept: tuple[int, int]  # the training guide's (at least, about)
    encoders: tuple[str, ...]  # kohya's key prefix of each text encoder's modules
    architecture: str  # modelspec.architecture
    kohya_version: str  # kohya's ss_base_model_version
    architecture_v: str = ""  # with v-prediction, where the standard names it apart
    kohya_v_suffix: bool = True  # kohya marks v-prediction with "_v"
    clip_skip: bool = True  # model.clip_skip acts (SDXL's trainers read fixed layers of both encoders)
    sgm_unet: bool = False  # the UNet of SDXL's layout (three levels; its blocks named as SGM names them)
    never_below_native: bool = False  # the guide never trains it under its native resolution

    @property
    def two_encoders(self) -> bool:
        return len(self.encoders) > 1

    def modelspec(self, v_prediction: bool) -> str:
        return self.architecture_v if v_prediction and self.architecture_v else self.architecture

    def kohya(self, v_prediction: bool) -> str:
        return self.kohya_version + ("_v" if v_prediction and self.kohya_v_suffix else "")


FAMILIES: dict[str, Family] = {
    "sd1": Family(512, (15, 30), ("lora_te",), "stable-diffusion-v1", "sd_v1"),
    "sd2": Family(768, (15, 30), ("lora_te",), "stable-diffusion-v2-512", "sd_v2",
                  architecture_v="stable-diffusion-v2-768-v"),
    "sdxl": Family(1024, (12, 20), ("lora_te1", "lora_te2"), "stable-diffusion-xl-v1-base", "sdxl_base_v1-0",
                   kohya_v_suffix=False, clip_skip=False, sgm_unet=True, never_below_native=True),
}
