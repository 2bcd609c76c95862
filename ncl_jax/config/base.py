"""Every ncl_jax config field, with its default and a one-line meaning.

Dataset files (`cifar100_lt.py`, ...) start from `get_base_config()` and change only what
differs. Fields that the variant (`paper` / `official`) presets are None here and are filled by
`ncl_jax.config.variants.resolve_config` after every override, so that the two readings of NCL are
consistent sets of named fields (docs/design.md, "Paper and official code").

Durations are in epochs; steps are derived from them once the data is known
(`ncl_jax.training.loop.resolve_steps_per_epoch`).
"""

from __future__ import annotations

import ml_collections


def _from_variant(field_type: type) -> ml_collections.FieldReference:
    """None until ncl_jax.config.variants.resolve_config fills it from the variant (after every
    override); typed, so that --config.x=value parses."""
    return ml_collections.FieldReference(None, field_type=field_type)


def get_base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.variant = "paper"  # "paper" (Eqs. 2-12) | "official"; fills every None field (variants)
    c.preset_variant = ""  # set by config files that preset fields per variant themselves
    c.seed = 42  # root PRNG seed: init, anchor draws, augmentation streams
    c.batch_size = 64  # GLOBAL training batch over all devices and hosts
    c.eval_batch_size = 256  # GLOBAL evaluation batch (padded with a mask at the end)
    c.num_epochs = 400  # training length in epochs
    c.steps_per_epoch = -1  # -1: len(train subset) // batch_size (drop remainder); >0 caps it

    # ---------------------------------------------------------------- data
    c.dataset = d = ml_collections.ConfigDict()
    d.source = "tfds"  # "tfds" | "split_list" (one "path label" per line) | "image_folder"
    #                  | "cache" (a prepared .npz of ncl_jax.cache_dataset; no TensorFlow)
    d.cache_path = ""  # source="cache": the prepared file (ncl_jax/data/cache.py)
    d.pipeline = "auto"  # "tfdata" (host) | "device" (data and augmentation on the devices)
    #                      | "auto" (ncl_jax/data/device_pipeline.resolve_pipeline says which)
    d.name = "cifar100"  # TFDS builder name (cifar10, cifar100, cifar10_jpeg, imagenet2012,
    #                      places365_small, i_naturalist2018); a free label for other sources
    d.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: $TFDS_DATA_DIR
    d.download = "auto"  # missing TFDS dataset: "auto" fetches cifar10/100 only | True | False
    d.train_split = "train"  # TFDS split holding the (balanced or long-tailed) training set
    d.eval_split = "test"  # TFDS split used for per-epoch evaluation and model selection
    d.num_classes = 100  # number of classes C
    d.imbalance_factor = 100.0  # CIFAR-LT profile n_max/n_min; 0 keeps the split as it is
    d.subset_seed = 0  # numpy seed of the LDAM/PaCo per-class shuffle (0 = their subset)
    d.train_list = ""  # split_list: file of "relative/path label" lines (ImageNet-LT style);
    #                    tfds: optional list of file names that filters the TFDS split
    d.eval_list = ""  # same, for evaluation
    d.image_root = ""  # split_list / image_folder: root directory of the images
    d.on_bad_file = "error"  # bad image file: "error" stops naming it | "skip" (bad_files.txt)
    d.image_size = 32  # training crop size (CIFAR 32, others 224)
    d.train_view = "cifar_randaugment"  # classification view (see ncl_jax.data.augment.VIEWS)
    d.key_view = "moco_cifar"  # MoCo key view, used only when moco.enabled
    d.eval_view = "cifar_test"  # evaluation transform
    d.normalization = "cifar"  # per-dataset mean/std: "cifar" | "imagenet" | "inat"
    d.eval_max_examples = -1  # >0 evaluates only the first N examples (smoke tests)
    d.cache = True  # keep decoded training images in memory (small datasets)
    d.shuffle_buffer = 16_384  # streamed (large) datasets only: shuffle buffer size
    d.prefetch = 2  # batches prefetched on host and to devices
    d.num_parallel_calls = -1  # tf.data parallelism for decode/augment (-1 = AUTOTUNE)

    # ---------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.backbone = "resnet32_cifar"  # resnet32_cifar | resnet50 | resnet152 | resnext50_32x4d
    m.num_experts = 3  # K experts (complete, independent networks)
    m.depth = -1  # -1: the backbone's own depth; ResNet-CIFAR: blocks per stage (5 = ResNet-32)
    m.width = -1  # -1: the backbone's own base width (CIFAR 16, ImageNet 64); tests use tiny
    m.classifier = "linear"  # "linear" (CIFAR) | "cosine" (ImageNet-LT, iNat, Places)
    m.cos_scale = 16.0  # fixed scale s of the cosine classifier (iNat 32)
    m.pretrained_path = ""  # local .npz of converted torchvision weights (Places ResNet-152)
    m.expert_strategy = "auto"  # how experts are applied: auto | vmap | loop | cpu_loop
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
    m.bn_unbiased_variance = _from_variant(bool)  # running var from n/(n-1) var (PyTorch)

    # ---------------------------------------------------------------- loss
    c.loss = lo = ml_collections.ConfigDict()
    lo.hard_ratio = 0.3  # beta = C_hard / C (paper)
    lo.num_hard = _from_variant(int)  # hard NEGATIVE classes; None: from hard_ratio (variants)
    lo.distill_weight = 0.6  # lambda on NBOD-all (0 removes it)
    lo.hard_distill_weight = 0.6  # lambda on NBOD-hard (0 removes it)
    lo.nil_hard_weight = 1.0  # weight of NIL-hard (NIL = NIL-all + NIL-hard; 0 removes it)
    lo.balanced = True  # balanced softmax (z + log n) in NIL and NBOD; False: plain CE
    lo.distill_balanced = True  # NBOD on balanced probabilities; False: NOD (Fig. 6a)
    lo.hard_probs = _from_variant(str)  # "restricted" softmax over Psi (Eq. 4) | "masked_logits"
    lo.nil_hard_set = _from_variant(str)  # NIL-hard set: "per_expert" (Eq. 3) | "anchor"
    lo.anchor = _from_variant(str)  # anchor expert of the shared hard set: "random" | "first"
    lo.distill_norm = _from_variant(str)  # NBOD normaliser: "pairs" 1/(K(K-1)) | "experts" 1/(K-1)
    lo.distill_log_eps = _from_variant(float)  # student log(p + eps): paper 0, official 1e-9
    lo.teacher_stop_gradient = False  # stop gradients through the KL target (DML-style)

    # ---------------------------------------------------------------- self-supervision
    c.moco = mc = ml_collections.ConfigDict()
    mc.enabled = True  # Eq. 11 contrastive term with per-expert key encoders and queues
    mc.weight = 1.0  # weight of L_con
    mc.dim = 64  # projection dimension D
    mc.queue_size = 1024  # N keys per expert queue; must be a multiple of batch_size
    mc.temperature = 0.2  # tau
    mc.momentum = 0.999  # EMA momentum m of the key encoder
    mc.ema_repeats = _from_variant(int)  # EMA applications per step: paper 1, official K
    mc.key_init = _from_variant(str)  # key encoder init: "copy" of the query | "independent"
    mc.ema_projector = _from_variant(bool)  # EMA the key MLP too (official: frozen random MLP)
    mc.ema_before_keys = _from_variant(bool)  # EMA before the keys (MoCo) | after (official)

    # ---------------------------------------------------------------- optimisation
    c.optim = o = ml_collections.ConfigDict()
    o.learning_rate = 0.1  # base learning rate (no scaling with batch size, as official)
    o.momentum = 0.9  # SGD momentum
    o.nesterov = True  # Nesterov momentum
    o.weight_decay = 2e-4  # coupled L2 on every trainable parameter (BN and biases included)
    o.schedule = "warmup_multistep"  # "warmup_multistep" | "cosine" (stepped once per epoch)
    o.warmup_epochs = 5  # linear warm-up from warmup_factor*lr over these epochs
    o.warmup_factor = 1.0 / 3.0  # starting factor of the warm-up
    o.milestones = (320, 360)  # epochs at which lr is multiplied by decay_factor
    o.decay_factor = 0.1  # multi-step decay factor
    o.cosine_min_lr = 1e-4  # floor of the per-epoch cosine schedule
    c.sync_batch_stats = True  # BatchNorm statistics over the whole global batch (SyncBN)
    c.cpu_devices = -1  # CPU hosts only: XLA devices to split the host into; -1 = one per
    #                   core when the batches split evenly (ncl_jax.training.host_devices); 1 = off

    # ---------------------------------------------------------------- evaluation / logging
    c.eval_every_epochs = 1  # evaluate on dataset.eval_split every N epochs
    c.eval_aggregation = "mean_logits"  # ensemble: mean of logits (paper) | "mean_probs"
    c.eval_tau = (0.0,)  # post-hoc logit adjustments z - tau log(prior) also reported (0: raw)
    c.group_rule = _from_variant(str)  # many/few: "official" (>=100 / <=20) | "paper" (>100 / <20)
    c.log_every_steps = 50  # training metrics / progress interval
    c.checkpoint_every_epochs = 10  # periodic checkpoint interval (also at the end, on SIGTERM)
    c.keep_checkpoints = 2  # newest periodic checkpoints kept (the final one is the newest);
    #                         best_ensemble / best_single keep one each
    return c
