"""Media in and out, on real files made here: portraits, speech uploads, the 51.2 → 44.1 kHz step, MP4s."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from magihuman.config import MediaLimits
from magihuman.errors import InputError
from magihuman.media import (
    OUTPUT_SAMPLE_RATE,
    VIRTUAL_SAMPLE_RATE,
    Mp4Writer,
    crop_resize,
    image_to_tensor,
    load_audio,
    load_portrait,
    read_video_frames,
    usable_audio_seconds,
    virtual_to_44k,
    write_mp4,
)
from tests.files import noise_image, tone, wav, write_audio
from tests.probe import probe_media

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)

# ---------------------------------------------------------------------------------------------------------
# File makers
# ---------------------------------------------------------------------------------------------------------


def _png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot save (16-bit RGB) or should not have to encode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width×height RGB but holds almost no pixel data: decoding it would fail."""
    path.write_bytes(_png_bytes(width, height, 8, 2, b"\0" * 64))
    return path


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)])


def _frames(count: int, height: int, width: int) -> np.ndarray:
    """(F, H, W, 3) uint8 solid frames, a different colour each."""
    colours = np.stack([np.arange(count) * 9 % 256, 200 - np.arange(count) * 5, np.full(count, 60)], axis=1)
    return np.broadcast_to(colours[:, None, None, :], (count, height, width, 3)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# 1. Portraits
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tiff"])
def test_load_portrait_reads_common_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"face{suffix}"
    Image.new("RGB", (240, 160), RED).save(path)
    img = load_portrait(path)
    assert (img.mode, img.size) == ("RGB", (240, 160))
    assert np.abs(np.asarray(img, dtype=int) - RED).max() <= 2


def test_load_portrait_applies_exif_orientation(tmp_path: Path) -> None:
    # Stored landscape, left half red; orientation 6 means "rotate 90° clockwise to display".
    stored = Image.new("RGB", (240, 160), BLUE)
    stored.paste(RED, (0, 0, 120, 160))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, exif=exif, quality=95)
    img = load_portrait(path)
    assert img.size == (160, 240)
    assert np.abs(np.subtract(img.getpixel((80, 30)), RED)).max() < 10  # the red half is now on top
    assert np.abs(np.subtract(img.getpixel((80, 210)), BLUE)).max() < 10


def _cmyk_jpeg(path: Path) -> None:
    Image.new("RGB", (200, 150), RED).convert("CMYK").save(path)


def _palette_png(path: Path) -> None:
    Image.new("RGB", (200, 150), (10, 120, 230)).quantize().save(path)


def _still_gif(path: Path) -> None:
    Image.new("RGB", (200, 150), (0, 255, 0)).save(path)


def _grey_png(path: Path) -> None:
    Image.new("L", (200, 150), 77).save(path)


def _bilevel_png(path: Path) -> None:
    Image.new("1", (200, 150), 1).save(path)


def _transparent_png(path: Path) -> None:
    Image.new("RGBA", (200, 150), (0, 0, 0, 0)).save(path)


def _half_transparent_black_png(path: Path) -> None:
    Image.new("RGBA", (200, 150), (0, 0, 0, 128)).save(path)


def _grey_alpha_png(path: Path) -> None:
    Image.new("LA", (200, 150), (0, 0)).save(path)


def _palette_with_transparent_index_png(path: Path) -> None:
    img = Image.new("P", (200, 150), 0)
    img.putpalette([0, 0, 0] * 256)
    img.save(path, transparency=0)


def _grey16_png(path: Path) -> None:
    Image.fromarray(np.full((150, 200), 128 * 257, dtype=np.uint16)).save(path)


def _rgb16_png(path: Path) -> None:
    pixel = struct.pack(">HHH", 65535, 32896, 0)  # 16-bit (255, 128, 0)
    path.write_bytes(_png_bytes(200, 150, 16, 2, (b"\0" + pixel * 200) * 150))


@pytest.mark.parametrize(
    ("name", "make", "expected", "tolerance"),
    [
        ("cmyk.jpg", _cmyk_jpeg, RED, 8),
        ("palette.png", _palette_png, (10, 120, 230), 0),
        ("still.gif", _still_gif, (0, 255, 0), 0),
        ("grey.png", _grey_png, (77, 77, 77), 0),
        ("bilevel.png", _bilevel_png, WHITE, 0),
        ("transparent.png", _transparent_png, WHITE, 0),
        ("half_transparent.png", _half_transparent_black_png, (127, 127, 127), 1),
        ("grey_alpha.png", _grey_alpha_png, WHITE, 0),
        ("palette_transparent.png", _palette_with_transparent_index_png, WHITE, 0),
        ("grey16.png", _grey16_png, (128, 128, 128), 0),
        ("rgb16.png", _rgb16_png, (255, 128, 0), 0),
    ],
)
def test_load_portrait_converts_every_mode_to_rgb(
    tmp_path: Path, name: str, make: Callable[[Path], None], expected: tuple[int, int, int], tolerance: int
) -> None:
    path = tmp_path / name
    make(path)
    img = load_portrait(path)
    assert (img.mode, img.size) == ("RGB", (200, 150))
    assert np.abs(np.asarray(img, dtype=int) - expected).max() <= tolerance


def test_load_portrait_takes_the_first_picture_of_a_multi_picture_jpeg(tmp_path: Path) -> None:
    # Phones save MPO files (photo + preview/depth): Pillow calls them animated, but they are stills.
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (200, 150), RED).save(
        path, format="MPO", save_all=True, append_images=[Image.new("RGB", (200, 150))]
    )
    assert np.abs(np.asarray(load_portrait(path), dtype=int) - RED).max() <= 2


def _animated(path: Path) -> None:
    frames = [Image.new("RGB", (200, 150), (40 * i, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def _truncated(encoded_as: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        noise_image(200, 150).save(path, format=encoded_as)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return make


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.png", lambda path: None, "not found"),
        ("empty.png", lambda path: path.write_bytes(b""), "empty"),
        ("notes.png", lambda path: path.write_text("not a picture\n" * 50), "not an image"),
        ("cut.jpg", _truncated("JPEG"), "damaged or cut short"),
        ("cut.png", _truncated("PNG"), "damaged or cut short"),
        ("bomb.png", lambda path: _header_only_png(path, 20_000, 20_000), "too large to open safely"),
        ("huge.png", lambda path: _header_only_png(path, 9_000, 9_000), r"9000×9000 pixels \(81 megapixels\)"),
        ("tiny.png", lambda path: Image.new("RGB", (100, 80)).save(path), "at least 128 pixels"),
        ("animated.gif", _animated, "animated"),
        ("animated.png", _animated, "animated"),
        ("animated.webp", _animated, "animated"),
        (
            "vector.eps",
            lambda path: path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 200 150\n"),
            "not an",
        ),
    ],
)
def test_load_portrait_rejects_unusable_files(
    tmp_path: Path, name: str, make: Callable[[Path], None], message: str
) -> None:
    _assert_refused(load_portrait, tmp_path / name, make, message)


def _assert_refused(load: Callable[[Path], object], path: Path, make: Callable[[Path], None], message: str) -> None:
    """`load` refuses the file `make` writes with an `InputError` that names it and says to upload again."""
    make(path)
    with pytest.raises(InputError, match=message) as caught:
        load(path)
    assert path.name in str(caught.value) and "upload" in str(caught.value)


def test_load_portrait_refuses_oversized_files_before_opening_them(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(bytes(2 * 2**20))
    with pytest.raises(InputError, match="2 MB, more than the 1 MB"):
        load_portrait(path, MediaLimits(max_image_bytes=2**20))


def test_crop_resize_returns_an_image_of_the_target_size_unchanged() -> None:
    img = noise_image(448, 256)
    assert crop_resize(img, 256, 448) is img


@pytest.mark.parametrize(
    ("size", "target_hw", "box"),
    [
        ((1280, 720), (256, 448), (10, 0, 1270, 720)),  # the reference's centre crop
        ((1280, 720), (1088, 1920), (5, 0, 1275, 720)),  # the reference's centre crop
        ((720, 1280), (256, 448), (0, 434, 720, 846)),  # 434.5 and 845.5 round half to even
        ((1000, 1000), (448, 256), (214, 0, 786, 1000)),
    ],
)
def test_crop_resize_keeps_the_reference_crop_box(
    size: tuple[int, int], target_hw: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    img = noise_image(*size)
    height, width = target_hw
    out = crop_resize(img, height, width)
    expected = img.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    assert out.size == (width, height)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_image_to_tensor_layout_and_range() -> None:
    img = Image.new("RGB", (64, 32), (0, 255, 0))
    tensor = image_to_tensor(img)
    assert tensor.shape == (1, 3, 1, 32, 64) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.equal(tensor[0, :, 0, 5, 7], torch.tensor([-1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="RGB"):
        image_to_tensor(img.convert("L"))


def test_image_to_tensor_matches_diffusers_preprocessing() -> None:
    video_processor = pytest.importorskip("diffusers.video_processor")
    img = noise_image(96, 64)
    expected = video_processor.VideoProcessor(vae_scale_factor=16).preprocess(img, height=64, width=96)
    assert torch.equal(image_to_tensor(img)[:, :, 0], expected)


# ---------------------------------------------------------------------------------------------------------
# 2. Audio input
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [("tone.wav", "pcm_s16le", 44_100), ("tone.mp3", "libmp3lame", 44_100), ("tone.ogg", "libopus", 48_000)]
    + [("tone.m4a", "aac", 22_050)],
)
def test_load_audio_decodes_any_container_to_virtual_rate_mono(
    tmp_path: Path, name: str, codec: str, rate: int
) -> None:
    path = write_audio(tmp_path / name, tone(2.0, rate), rate, codec)
    wave = load_audio(path, seconds=1)
    assert wave.shape == (VIRTUAL_SAMPLE_RATE,) and wave.dtype == np.float32
    assert abs(_peak_hz(wave, VIRTUAL_SAMPLE_RATE) - 440) <= 1  # pitch kept: resampled, not re-labelled
    assert np.sqrt(np.mean(wave[VIRTUAL_SAMPLE_RATE // 10 :] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.1)


def test_load_audio_reads_the_sound_of_a_video(tmp_path: Path) -> None:
    audio = tone(1.0, OUTPUT_SAMPLE_RATE).T
    path = write_mp4(tmp_path / "talk.mp4", _frames(25, 16, 16), audio, preset="ultrafast")
    wave = load_audio(path, seconds=0.5)
    assert len(wave) == VIRTUAL_SAMPLE_RATE // 2 and abs(_peak_hz(wave, VIRTUAL_SAMPLE_RATE) - 440) <= 2


def test_load_audio_returns_a_shorter_track_whole(tmp_path: Path) -> None:
    wave = load_audio(wav(tmp_path / "two_seconds.wav", 2.0))
    assert len(wave) == 2 * VIRTUAL_SAMPLE_RATE
    assert np.array_equal(wave * 32768, np.round(wave * 32768))  # int16 / 32768, as the reference loader


def _hour_longwav(path: Path) -> Path:
    """One hour of 8 kHz 8-bit mono tone (29 MB), written directly: encoding it would take seconds."""
    rate, seconds = 8000, 3600
    period = (128 + 60 * np.sin(2 * np.pi * np.arange(20) / 20)).astype(np.uint8)  # 400 Hz
    data = np.tile(period, rate * seconds // len(period)).tobytes()
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, rate, 1, 8)
    path.write_bytes(
        b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return path


def _bytes_read_by_this_process() -> int:
    """Bytes this process has read through read() calls so far (Linux: /proc/self/io)."""
    io = Path("/proc/self/io")
    if not io.exists():
        pytest.skip("needs /proc/self/io to count the bytes read")
    return int(next(line for line in io.read_text().splitlines() if line.startswith("rchar:")).split()[1])


def test_load_audio_stops_decoding_at_the_clip_length(tmp_path: Path) -> None:
    path = _hour_longwav(tmp_path / "lecture.wav")
    read_before = _bytes_read_by_this_process()
    wave = load_audio(path, seconds=3)
    read = _bytes_read_by_this_process() - read_before
    assert len(wave) == 3 * VIRTUAL_SAMPLE_RATE
    assert read < path.stat().st_size / 20  # 3 s of an hour (plus FFmpeg's probe), not the whole file
    assert usable_audio_seconds(path) == 10.0  # capped at MediaLimits.max_audio_seconds


def test_usable_audio_seconds_counts_whole_video_frames(tmp_path: Path) -> None:
    # 2.5 s = 128000 samples at 51.2 kHz = 62.5 audio latents → 62 frames of 40 ms.
    assert usable_audio_seconds(wav(tmp_path / "speech.wav", 2.5)) == pytest.approx(2.48)


def test_load_audio_accepts_quiet_speech(tmp_path: Path) -> None:
    load_audio(wav(tmp_path / "quiet.wav", 1.0, amplitude=10 ** (-45 / 20)))


def _video_only_mp4(path: Path) -> None:
    write_mp4(path, _frames(2, 16, 16), preset="ultrafast")


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.wav", lambda path: None, "not found"),
        ("empty.wav", lambda path: path.write_bytes(b""), "empty"),
        ("notes.wav", lambda path: path.write_text("not a recording\n" * 50), "not an audio file"),
        ("cut.wav", lambda path: path.write_bytes(wav(path, 1.0).read_bytes()[:30]), "not an audio file"),
        ("silent_film.mp4", _video_only_mp4, "no audio track"),
        ("photo.png", lambda path: Image.new("RGB", (200, 150)).save(path), "no audio track"),
        ("click.wav", lambda path: wav(path, 0.03), "only 30 ms of audio"),
        ("silence.wav", lambda path: wav(path, 2.0, amplitude=0.0), "silent"),
    ],
)
def test_load_audio_rejects_unusable_files(
    tmp_path: Path, name: str, make: Callable[[Path], None], message: str
) -> None:
    _assert_refused(load_audio, tmp_path / name, make, message)


def test_load_audio_refuses_oversized_files_and_overlong_requests(tmp_path: Path) -> None:
    path = wav(tmp_path / "speech.wav", 1.0)
    with pytest.raises(InputError, match="more than the"):
        load_audio(path, limits=MediaLimits(max_audio_bytes=1000))
    with pytest.raises(ValueError, match="seconds"):
        load_audio(path, seconds=11)


# ---------------------------------------------------------------------------------------------------------
# 3. Audio output
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("samples", "expected"), [(2048, 1764), (26 * 2048, 26 * 1764), (126 * 2048, 126 * 1764)])
def test_virtual_to_44k_lengths(samples: int, expected: int) -> None:
    out = virtual_to_44k(np.zeros((samples, 2), np.float32))
    assert out.shape == (expected, 2) and out.dtype == np.float32


def test_virtual_to_44k_truncates_odd_lengths() -> None:
    assert virtual_to_44k(np.zeros((1000, 2), np.float32)).shape == (861, 2)  # int(1000·441/512) = int(861.3)


def test_virtual_to_44k_keeps_pitch_and_does_not_clamp() -> None:
    t = np.arange(VIRTUAL_SAMPLE_RATE) / VIRTUAL_SAMPLE_RATE
    tone = (1.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    out = virtual_to_44k(np.stack([tone, -tone], axis=1))
    assert out.shape == (OUTPUT_SAMPLE_RATE, 2)
    assert _peak_hz(out[:, 0], OUTPUT_SAMPLE_RATE) == 1000
    assert out.max() == pytest.approx(1.5, abs=1e-3)
    with pytest.raises(ValueError, match="channels"):
        virtual_to_44k(tone)


# ---------------------------------------------------------------------------------------------------------
# 4. Muxing and probing
# ---------------------------------------------------------------------------------------------------------


def test_write_mp4_is_a_web_playable_h264_aac_file(tmp_path: Path) -> None:
    # A 1-second clip: 25 decoded video frames, 28 audio latents, so the audio runs 120 ms past the video.
    audio = tone(28 / 25, OUTPUT_SAMPLE_RATE).T
    path = write_mp4(tmp_path / "clip.mp4", _frames(25, 64, 96), audio, preset="ultrafast")
    info = probe_media(path)
    assert "mp4" in info.container and info.faststart is True
    video, sound = info.video, info.audio
    assert (video.codec, video.pixel_format, video.fps, video.frames) == ("h264", "yuv420p", Fraction(25), 25)
    assert (video.width, video.height, video.seconds) == (96, 64, 1.0)
    assert (sound.codec, sound.sample_rate, sound.channels) == ("aac", 44_100, 2)
    assert sound.seconds == pytest.approx(1.12, abs=1e-3)  # kept whole: no `-shortest`
    assert info.seconds == pytest.approx(1.12, abs=1e-3)


def test_write_mp4_frames_decode_back_to_the_input(tmp_path: Path) -> None:
    frames = _frames(6, 32, 48)
    path = write_mp4(tmp_path / "clip.mp4", frames)
    decoded = read_video_frames(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(int) - frames).mean() < 3  # CRF 10: near-lossless


def test_write_mp4_video_only_and_no_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    out.mkdir(), cwd.mkdir()
    monkeypatch.chdir(cwd)
    info = probe_media(write_mp4(out / "clip.mp4", _frames(3, 16, 16), preset="ultrafast"))
    assert info.audio is None and info.video.frames == 3
    assert [p.name for p in out.iterdir()] == ["clip.mp4"] and not any(cwd.iterdir())


def _decoded(path: Path) -> np.ndarray:
    return read_video_frames(path)


def test_mp4_written_in_pieces_equals_the_one_written_at_once(tmp_path: Path) -> None:
    """The engine encodes each decoder window as it arrives: same frames, same audio, same file layout."""
    frames, audio = _frames(29, 32, 48), tone(1.3, OUTPUT_SAMPLE_RATE).T
    whole = write_mp4(tmp_path / "whole.mp4", frames, audio, preset="ultrafast")
    with Mp4Writer(tmp_path / "pieces.mp4", audio, preset="ultrafast") as writer:
        for piece in (frames[:1], frames[1:13], frames[13:28], frames[28:]):  # the decoder's uneven windows
            writer.write(piece)
    assert writer.frames_written == 29
    assert np.array_equal(_decoded(writer.path), _decoded(whole))
    assert probe_media(writer.path) == probe_media(whole)


def test_mp4_writer_refuses_a_size_change_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    with pytest.raises(ValueError, match="16×16 in a 48×32 video"), Mp4Writer(path, preset="ultrafast") as writer:
        writer.write(_frames(2, 32, 48))
        writer.write(_frames(2, 16, 16))
    assert not path.exists()
    with pytest.raises(ValueError, match="at least one frame"), Mp4Writer(path):
        pass
    assert not path.exists()


@pytest.mark.parametrize(
    ("frames", "audio", "message"),
    [
        (_frames(2, 15, 16), None, "even"),
        (_frames(2, 16, 16).astype(np.float32), None, "uint8"),
        (_frames(2, 16, 16)[..., :1], None, "uint8"),
        (_frames(2, 16, 16), np.zeros((100, 1), np.float32), "stereo"),
        (_frames(2, 16, 16), np.zeros((100, 2), np.int16), "stereo"),
    ],
)
def test_write_mp4_rejects_bad_arrays(
    tmp_path: Path, frames: np.ndarray, audio: np.ndarray | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_mp4(tmp_path / "clip.mp4", frames, audio)
    assert not (tmp_path / "clip.mp4").exists()


def test_probe_media_tells_a_file_without_faststart(tmp_path: Path) -> None:
    path = tmp_path / "slow_start.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for index, pixels in enumerate(_frames(2, 16, 16)):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    assert probe_media(path).faststart is False


def test_probe_media_reads_plain_audio(tmp_path: Path) -> None:
    info = probe_media(wav(tmp_path / "speech.wav", 1.5))
    assert info.video is None and info.faststart is None
    assert (info.audio.codec, info.audio.sample_rate, info.audio.channels) == ("pcm_s16le", 44_100, 2)
    assert info.audio.seconds == pytest.approx(1.5)
