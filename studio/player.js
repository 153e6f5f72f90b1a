const q = (selector) => element.querySelector(selector);
const root = q(".cp-root");
const stage = q(".cp-stage");
const left = q(".cp-video-left");
const right = q(".cp-video-right");
const playButton = q(".cp-play");
const seek = q(".cp-seek");
const time = q(".cp-time");
const muteButton = q(".cp-mute");
const modeButton = q(".cp-mode");
const divider = q(".cp-divider");
// The left video is the clock (and the only one heard); the right one follows it.
// Seconds the right video may lag or lead before its playback rate is nudged: half a frame at 25 fps. (The
// left video's audio starts late: the right one's clock settles about 0.045 s, over a frame, ahead of it,
// which a 0.05 s tolerance would leave alone.)
const DRIFT = 0.02;
const JUMP = 0.3; // beyond this the right video seeks instead of catching up
let hasRight = false;
let resumeAfterSeek = false; // a seek barrier is holding both videos (see holdForSeek)
let split = 0.5;
let dragging = false;
let frame = 0;

// Play only files this app serves from its cache: same origin, Gradio's /gradio_api/file= route.
function servedUrl(file) {
  if (!file || typeof file.url !== "string") return null;
  try {
    const url = new URL(file.url, window.location.href);
    const ours = url.origin === window.location.origin && url.pathname.includes("/gradio_api/file=");
    return ours ? url.href : null;
  } catch (error) {
    return null;
  }
}

function setSource(video, url) {
  if (url) {
    if (video.src !== url) video.src = url;
  } else if (video.hasAttribute("src")) {
    video.removeAttribute("src");
    video.load();
  }
}

function clock(seconds) {
  const tenths = Math.floor((Number.isFinite(seconds) ? Math.max(seconds, 0) : 0) * 10);
  return `${Math.floor(tenths / 600)}:${((tenths % 600) / 10).toFixed(1).padStart(4, "0")}`;
}

function showTime() {
  const duration = Number.isFinite(left.duration) ? left.duration : 0;
  seek.max = String(duration);
  seek.value = String(left.currentTime);
  seek.style.setProperty("--cp-progress", duration ? `${(100 * left.currentTime) / duration}%` : "0%");
  time.textContent = `${clock(left.currentTime)} / ${clock(duration)}`;
}

// Keep the right video on the left one's clock: small drift is caught up through the playback rate, large drift by seeking.
function follow() {
  if (!hasRight || left.paused || right.seeking) return;
  if (right.paused && !right.ended) right.play().catch(() => {});
  const drift = right.currentTime - left.currentTime;
  if (Math.abs(drift) > JUMP) {
    right.currentTime = left.currentTime;
    right.playbackRate = 1;
  } else {
    right.playbackRate = Math.abs(drift) > DRIFT ? 1 - 0.1 * Math.sign(drift) : 1;
  }
}

function tick() {
  showTime();
  follow();
  frame = left.paused ? 0 : requestAnimationFrame(tick);
}

function syncRight() {
  right.pause();
  right.playbackRate = 1;
  if (hasRight) right.currentTime = left.currentTime;
}

function play() {
  if (!left.hasAttribute("src")) return;
  if (left.ended) left.currentTime = 0;
  left.play().catch(() => {});
}

function pause() {
  resumeAfterSeek = false;
  left.pause();
  syncRight();
}

const toggle = () => (left.paused ? play() : pause());

function seekTo(seconds) {
  left.currentTime = seconds;
  showTime();
}

// Every seek of the left video, whatever made it (the scrub bar, keyboard or media keys, a script), playing
// or paused, takes the right video to the same time.
function followSeek() {
  if (hasRight && Math.abs(right.currentTime - left.currentTime) > 0.001) right.currentTime = left.currentTime;
}

// A seek barrier: a seek while playing pauses both videos until both have landed, then starts them together.
// Left running, whichever video lands first plays on alone (2-3 frames apart after a scrub, more than drift
// correction should have to absorb).
function holdForSeek() {
  if (!hasRight) return;
  if (!left.paused) {
    resumeAfterSeek = true;
    left.pause();
  }
  right.pause();
  right.playbackRate = 1;
  followSeek();
}

function releaseSeek() {
  if (!resumeAfterSeek || left.seeking || right.seeking) return;
  if (Math.abs(right.currentTime - left.currentTime) > 0.001) {
    right.currentTime = left.currentTime; // its "seeked" comes back here
    return;
  }
  resumeAfterSeek = false;
  Promise.all([left.play(), right.play()]).catch(() => {});
}

function setWipe(on) {
  const wipe = on && hasRight;
  root.classList.toggle("cp-wipe", wipe);
  modeButton.setAttribute("aria-pressed", String(wipe));
  modeButton.textContent = wipe ? "Side by side" : "A/B wipe";
}

function setSplit(fraction) {
  split = Math.min(Math.max(fraction, 0), 1);
  root.style.setProperty("--cp-split", `${(100 * split).toFixed(1)}%`);
  divider.setAttribute("aria-valuenow", String(Math.round(100 * split)));
}

function dragTo(event) {
  const box = stage.getBoundingClientRect();
  setSplit((event.clientX - box.left) / box.width);
}

// The value is applied through DOM properties only: labels are text, sources are checked URLs.
function load() {
  const value = props.value && typeof props.value === "object" ? props.value : {};
  const urlLeft = servedUrl(value.left);
  const urlRight = urlLeft ? servedUrl(value.right) : null;
  resumeAfterSeek = false;
  left.pause();
  hasRight = Boolean(urlRight);
  setSource(left, urlLeft);
  setSource(right, urlRight);
  syncRight();
  q(".cp-label-left").textContent = String(value.left_label ?? "");
  q(".cp-label-right").textContent = String(value.right_label ?? "");
  root.classList.toggle("cp-empty", !urlLeft);
  root.classList.toggle("cp-single", !hasRight);
  if (!hasRight) setWipe(false);
  showTime();
}

right.muted = true; // only the left video is heard: two soundtracks would echo
playButton.addEventListener("click", toggle);
stage.addEventListener("click", () => {
  if (!root.classList.contains("cp-wipe")) toggle();
});
left.addEventListener("play", () => {
  root.classList.add("cp-playing");
  playButton.setAttribute("aria-label", "Pause");
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(tick);
});
left.addEventListener("playing", () => {
  if (hasRight) right.play().catch(() => {});
});
left.addEventListener("pause", () => {
  if (resumeAfterSeek) return; // held by a seek: still "playing" for the user
  root.classList.remove("cp-playing");
  playButton.setAttribute("aria-label", "Play");
  syncRight();
  showTime();
});
for (const type of ["timeupdate", "durationchange", "loadedmetadata", "seeked", "emptied"]) {
  left.addEventListener(type, showTime);
}
left.addEventListener("loadedmetadata", () => {
  // The stage hugs the picture (no letterbox), so the wipe divider spans exactly the video.
  if (left.videoWidth && left.videoHeight) {
    root.style.setProperty("--cp-aspect", String(left.videoWidth / left.videoHeight));
  }
});
left.addEventListener("timeupdate", follow); // animation frames stop in background tabs; timeupdate does not
left.addEventListener("seeking", holdForSeek);
left.addEventListener("seeked", () => {
  followSeek();
  releaseSeek();
});
right.addEventListener("seeked", releaseSeek);
seek.addEventListener("input", () => seekTo(Number(seek.value)));
muteButton.addEventListener("click", () => {
  left.muted = !left.muted;
  root.classList.toggle("cp-muted", left.muted);
  muteButton.setAttribute("aria-pressed", String(left.muted));
  muteButton.setAttribute("aria-label", left.muted ? "Unmute" : "Mute");
});
modeButton.addEventListener("click", () => setWipe(!root.classList.contains("cp-wipe")));
stage.addEventListener("pointerdown", (event) => {
  if (!root.classList.contains("cp-wipe")) return;
  dragging = true;
  stage.setPointerCapture(event.pointerId);
  dragTo(event);
});
stage.addEventListener("pointermove", (event) => {
  if (dragging) dragTo(event);
});
for (const type of ["pointerup", "pointercancel"]) {
  stage.addEventListener(type, () => {
    dragging = false;
  });
}
divider.addEventListener("keydown", (event) => {
  const step = { ArrowLeft: -0.05, ArrowRight: 0.05 }[event.key];
  if (step === undefined) return;
  event.preventDefault();
  setSplit(split + step);
});

setSplit(0.5);
load();
watch("value", load);
