"""Typed configuration for every component: the model's published numbers, read (never re-typed) elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

CoordsStyle = Literal["v1", "v2"]

# --- 1. The DiT ------------------------------------------------------------------------------------------


def _field_values(cls, values: dict, exclude: frozenset | set = frozenset()) -> tuple[dict, dict]:
    known = set(cls.__dataclass_fields__) - set(exclude)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return fields, {k: v for k, v in values.items() if k not in known}


FULL_MM_LAYERS = (0, 1, 2, 3, 36, 37, 38, 39)
# 1080p-SR: every layer is frame-local except 3, 7, ..., 31.
FULL_LOCAL_ATTN_LAYERS = tuple(i for i in range(40) if not (i % 4 == 3 and i < 32))


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of the single-stream DiT. Defaults are the full 15B model."""

    num_layers: int = 40
    hidden_size: int = 5120
    head_dim: int = 128
    num_heads_kv: int = 8
    mm_layers: tuple[int, ...] = FULL_MM_LAYERS  # 3 experts (video, audio, text)
    gelu7_layers: tuple[int, ...] = (0, 1, 2, 3)  # ungated gelu7 MLP; all others swiglu7
    local_attn_layers: tuple[int, ...] = ()  # frame-local attention (1080p SR only)
    frame_receptive_field: int = 11  # latent frames on each side, for local layers
    coords_style: CoordsStyle = "v2"  # v2: base/distill, v1: super-resolution
    swiglu_intermediate_size: int = 13652
    gelu7_intermediate_size: int = 20480
    video_in_channels: int = 192
    audio_in_channels: int = 64
    text_in_channels: int = 3584
    latent_channels: int = 48
    patch_size_thw: tuple[int, int, int] = (1, 2, 2)
    norm_eps: float = 1e-6
    rope_temperature: float = 10000.0
    text_offset: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of head_dim {self.head_dim}")
        if self.num_heads_q % self.num_heads_kv:
            raise ValueError(f"{self.num_heads_q} query heads cannot share {self.num_heads_kv} KV heads")
        if self.head_dim % 8:
            raise ValueError("head_dim must be a multiple of 8 (3 RoPE axes x 2 halves)")
        for name in ("mm_layers", "gelu7_layers", "local_attn_layers"):
            bad = [i for i in getattr(self, name) if not 0 <= i < self.num_layers]
            if bad:
                raise ValueError(f"{name} names layers {bad} outside 0..{self.num_layers - 1}")
        pt, ph, pw = self.patch_size_thw
        if self.latent_channels * pt * ph * pw != self.video_in_channels:
            raise ValueError("video_in_channels must equal latent_channels x patch volume")

    @property
    def num_heads_q(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def rope_bands_per_axis(self) -> int:
        return self.head_dim // 8

    @property
    def rope_rotary_dims(self) -> int:
        return 6 * self.rope_bands_per_axis

    def num_experts(self, layer: int) -> int:
        return 3 if layer in self.mm_layers else 1

    def mlp_intermediate_size(self, layer: int) -> int:
        return self.gelu7_intermediate_size if layer in self.gelu7_layers else self.swiglu_intermediate_size

    @classmethod
    def from_dict(cls, values: dict) -> DiTConfig:
        return cls(**_field_values(cls, values)[0])


FULL_DIT = DiTConfig()

# Runs the pipeline on a CPU in seconds with every code path of the full model (sandwich and shared layers, GQA,
# both MLPs, local and global attention).
TINY_DIT = DiTConfig(
    num_layers=6,
    hidden_size=64,
    head_dim=16,
    num_heads_kv=2,
    mm_layers=(0, 1, 5),
    gelu7_layers=(0, 1),
    swiglu_intermediate_size=168,
    gelu7_intermediate_size=256,
    text_in_channels=64,
)
TINY_LOCAL_ATTN_LAYERS = (0, 1, 2, 4, 5)  # layer 3 stays global, as in the full model's pattern
TINY_FRAME_RECEPTIVE_FIELD = 1


# --- 2. Checkpoints: one DiT configuration per official weight folder ------------------------------------

DiTName = Literal["base", "distill", "sr-540p", "sr-1080p"]
ModelSize = Literal["full", "tiny"]


@dataclass(frozen=True)
class DiTPreset:
    """One official DiT checkpoint; a *tier* is a download bundle. Hub folder names appear only here."""

    name: DiTName
    subfolder: str  # folder inside the GAIR/daVinci-MagiHuman repository
    dit: DiTConfig
    tier: str  # the download tier that brings this checkpoint
    quantise_rank: int  # fp8 "auto" (magihuman.memory) quantises the lowest rank first
    # Activations of its largest stage plus allocator slack (estimates: 1080p SR attends over ~65k tokens).
    headroom_bytes: int = 8 * 2**30


def dit_presets(size: ModelSize = "full") -> dict[str, DiTPreset]:
    if size == "full":
        base, local, window = FULL_DIT, FULL_LOCAL_ATTN_LAYERS, FULL_DIT.frame_receptive_field
    elif size == "tiny":
        base, local, window = TINY_DIT, TINY_LOCAL_ATTN_LAYERS, TINY_FRAME_RECEPTIVE_FIELD
    else:
        raise ValueError(f"unknown model size {size!r}; expected 'full' or 'tiny'")
    sr = replace(base, coords_style="v1")
    return {
        "base": DiTPreset("base", "base", base, "base", quantise_rank=2),
        "distill": DiTPreset("distill", "distill", base, "distill", quantise_rank=3),
        "sr-540p": DiTPreset("sr-540p", "540p_sr", sr, "540p", quantise_rank=1),
        "sr-1080p": DiTPreset(
            "sr-1080p",
            "1080p_sr",
            replace(sr, local_attn_layers=local, frame_receptive_field=window),
            "1080p",
            quantise_rank=0,
            headroom_bytes=16 * 2**30,
        ),
    }


# --- 3. Sampling -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    distill_steps: int = 8
    base_steps: int = 32
    sr_steps: int = 5
    shift: float = 5.0
    sigma_max: float = 0.999  # start of the scheduler's training grid (stored as fp32)
    num_train_timesteps: int = 1000
    video_guidance_high: float = 5.0  # while timestep > guidance_switch_timestep
    video_guidance_low: float = 2.0
    guidance_switch_timestep: int = 500
    audio_guidance: float = 5.0
    sr_zsnr_index: int = 220  # row of the zero-terminal-SNR table used to re-noise the upsampled latent
    sr_audio_noise_scale: float = 0.7


SAMPLING = SamplingConfig()


# --- 4. Turbo VAE decoder. Lists are in encoder order; the decoder reverses them. ------------------------


@dataclass(frozen=True)
class TurboVAEConfig:
    latent_channels: int = 48
    out_channels: int = 3
    decoder_block_out_channels: tuple[int, ...] = (64, 128, 256, 512)
    decoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 3, 3)
    decoder_spatio_temporal_scaling: tuple[bool, ...] = (False, True, True, True)
    decoder_spatio_only: tuple[bool, ...] = (False, True, False, False)
    decoder_is_dw_conv: tuple[bool, ...] = (False, False, False, False, False)
    decoder_causal: bool = False
    patch_size: int = 2
    patch_size_t: int = 1
    use_unpatchify: bool = True
    resnet_norm_eps: float = 1e-6
    first_chunk_size: int = 7
    step_size: int = 7
    temporal_compression_ratio: int = 4
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, values: dict) -> TurboVAEConfig:
        kwargs, extra = _field_values(cls, values, exclude={"extra"})
        return cls(**kwargs, extra=extra)


FULL_TURBO_VAE = TurboVAEConfig()
# Full-size frames: one resnet per block keeps every kind of layer at a third of the work.
TINY_TURBO_VAE = TurboVAEConfig(decoder_block_out_channels=(3, 4, 6, 8), decoder_layers_per_block=(1, 1, 1, 1, 1))


# --- 5. Clip geometry ------------------------------------------------------------------------------------

FPS = 25
VAE_STRIDE_THW = (4, 16, 16)
MIN_SECONDS, MAX_SECONDS, DEFAULT_SECONDS = 1, 10, 5


@dataclass(frozen=True)
class Resolution:
    """An output resolution. Sizes are landscape (width > height); portrait swaps them."""

    name: str
    width: int
    height: int
    sr_model: DiTName | None  # None: the base stage's own resolution
    # ZeroGPU seconds per SR step of a 5 s clip, from the published H100 timings
    zerogpu_seconds_per_sr_step: float = 0.0

    def pixel_size(self, portrait: bool = False) -> tuple[int, int]:
        """(height, width) in pixels, snapped to what the latent grid can represent."""
        lat_h, lat_w = self.latent_hw(portrait)
        return lat_h * VAE_STRIDE_THW[1], lat_w * VAE_STRIDE_THW[2]

    def latent_hw(self, portrait: bool = False) -> tuple[int, int]:
        """Latent (H, W): pixels // 16, rounded down to even so that 2x2 patches tile it."""
        h, w = (self.width, self.height) if portrait else (self.height, self.width)
        return (h // VAE_STRIDE_THW[1]) // 2 * 2, (w // VAE_STRIDE_THW[2]) // 2 * 2


RESOLUTIONS: dict[str, Resolution] = {
    "256p": Resolution("256p", 448, 256, None),
    "540p": Resolution("540p", 896, 512, "sr-540p", zerogpu_seconds_per_sr_step=1.2),
    "1080p": Resolution("1080p", 1920, 1088, "sr-1080p", zerogpu_seconds_per_sr_step=7.0),
}
SR_RESOLUTIONS = tuple(name for name, res in RESOLUTIONS.items() if res.sr_model is not None)  # upscale targets


def video_frames(seconds: int) -> int:
    """Frames the pipeline asks for: seconds·25 + 1 (also the audio latent length without user audio)."""
    return seconds * FPS + 1


def latent_frames(seconds: int) -> int:
    return latents_for_frames(video_frames(seconds))


def latents_for_frames(num_frames: int) -> int:
    """Latent frames that decode to at least `num_frames` frames: (F − 1)//4 + 1 (inverse of decoded_frames)."""
    return (num_frames - 1) // VAE_STRIDE_THW[0] + 1


def decoded_frames(num_latent_frames: int) -> int:
    return VAE_STRIDE_THW[0] * (num_latent_frames - 1) + 1


# --- 6. Generation requests: accepted ranges and defaults (the engine validates, the UI reads them) ------

BaseModel = Literal["distill", "base"]
Aspect = Literal["landscape", "portrait"]


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_chars: int = 4000  # ~1000 T5Gemma tokens, beyond TEXT_ENCODER.max_tokens anyway
    max_steps: dict = field(default_factory=lambda: {"distill": 16, "base": 64})
    default_steps: dict = field(
        default_factory=lambda: {"distill": SAMPLING.distill_steps, "base": SAMPLING.base_steps}
    )
    max_sr_steps: int = 20
    min_guidance: float = 1.0
    max_guidance: float = 15.0
    max_seed: int = 2**32 - 1


REQUEST_LIMITS = RequestLimits()


# --- 7. Upload limits (checked by magihuman/media.py before anything is decoded) -------------------------


@dataclass(frozen=True)
class MediaLimits:
    max_image_bytes: int = 50 * 2**20
    max_image_pixels: int = 64_000_000  # 8000×8000; a phone's 48 MP photo fits, a decompression bomb does not
    min_image_side: int = 128  # below this a face is too blurry to animate, even at 256p
    max_audio_bytes: int = 200 * 2**20
    max_audio_seconds: float = MAX_SECONDS  # decoding stops here: a clip never uses more
    silence_rms: float = 1e-3  # −60 dBFS; quiet speech is around −40 dBFS


MEDIA_LIMITS = MediaLimits()


# --- 8. Text encoder and audio conventions ---------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    max_tokens: int = 640  # t5gemma_target_length: rows past this never reach the DiT
    cache_size: int = 16  # prompts kept encoded: the negative prompt plus recent user prompts


TEXT_ENCODER = TextEncoderConfig()


@dataclass(frozen=True)
class AudioConfig:
    """The audio VAE is fed and read at a virtual 51.2 kHz so that one latent (2048 samples) is one frame."""

    virtual_sample_rate: int = 51_200
    samples_per_latent: int = 2048
    latent_channels: int = 64
    output_sample_rate: int = 44_100  # what the mp4 carries after length-resampling by 441/512


AUDIO = AudioConfig()

# SR's own generator is seeded with seed + this, so upscaling a take later equals SR while generating it.
SR_SEED_OFFSET = 2**32
