"""The ``effnet`` command: thin argument parsing over the library."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

__all__ = ["main"]


def _cmd_models(args: argparse.Namespace) -> int:
    from .analysis import model_stats
    from .registry import get_config, list_models, weight_status

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    print(f"{'name':<26} {'family':<18} {'EfficientNet':<12} {'params (M)':>10} {'MACs (G)':>9} {'input':>6}  "
          f"pretrained weights (tag: where)")
    for name in names:
        s, cfg = model_stats(name), get_config(name)
        pretrained = ", ".join(f"{w.tag}: {weight_status(w)}" for w in cfg.weights) or "-"
        print(f"{name:<26} {cfg.family:<18} {'yes' if cfg.is_efficientnet else 'no':<12} {s['params'] / 1e6:>10.2f} "
              f"{s['macs'] / 1e9:>9.3f} {s['input_size']:>6}  {pretrained}")
    return 0


def _resolution(text: str):
    """``--resolution``: an integer is pixels (288), a decimal a multiplier (1.3)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected pixels (an integer such as 288) or a multiplier (such as 1.3), "
                                         f"got {text!r}") from None


def _scaling_args(args: argparse.Namespace) -> dict:
    """``create_model`` keyword arguments for --phi/--alpha/--beta/--gamma or --width/--depth/--resolution."""
    from .scaling import Scaling

    dims = {k: getattr(args, k) for k in ("width", "depth", "resolution") if getattr(args, k) is not None}
    bases = {k: getattr(args, k) for k in ("alpha", "beta", "gamma") if getattr(args, k) is not None}
    if args.phi is not None:
        if dims:
            raise ValueError(f"give --phi or --width/--depth/--resolution, not both (got --phi and "
                             f"{', '.join('--' + k for k in dims)})")
        return dict(phi=args.phi, **bases)
    if bases:
        raise ValueError(f"{', '.join('--' + k for k in bases)} {'needs' if len(bases) == 1 else 'need'} --phi (paper Eq. 3: d = alpha^phi, "
                         f"w = beta^phi, r = gamma^phi)")
    return dict(scaling=Scaling(**dims)) if dims else {}


def _stage_rows(net, in_chans: int = 3) -> list:
    """(stage, block, kernel, stride, expand, in, out, repeats, SE) rows of a network's table."""
    from .scaling import se_channels
    from .specs import BlockType

    rows = [("stem", "Conv", net.stem_kernel, net.stem_stride, "-", in_chans, net.stem_chs, 1, "-")]
    if net.stem_pool:
        rows.append(("pool", "MaxPool", 3, 2, "-", net.stem_chs, net.stem_chs, 1, "-"))
    in_chs = net.stem_chs
    for i, st in enumerate(net.stages, 1):
        se = se_channels(in_chs, st.se_ratio) if st.se_ratio > 0 else "-"
        if st.block is BlockType.BOTTLENECK:
            block = f"Bottleneck{st.inner_chs}"
        elif st.block is BlockType.DEPTHWISE_SEPARABLE:
            block = "DWSeparable"
        else:
            block = st.block.value + str(st.expand_ratio)
        rows.append((i, block, st.kernel, st.stride, st.expand_ratio, in_chs, st.out_chs, st.repeats, se))
        in_chs = st.out_chs
    if net.head_chs:
        rows.append(("head", "Conv1x1", 1, 1, "-", in_chs, net.head_chs, 1, "-"))
    return rows


def _cmd_info(args: argparse.Namespace) -> int:
    from .analysis import model_stats

    scale = _scaling_args(args)
    stats = model_stats(args.name, **scale)
    cfg = stats["config"]
    net, s, pre = cfg.network, cfg.scaling, cfg.preprocess
    print(f"{cfg.name} ({cfg.family}): width {s.width:.4g}, depth {s.depth:.4g}, resolution {s.resolution} px, "
          f"dropout {s.dropout}, drop_path {cfg.drop_path_rate}")
    print(f"params {stats['params']:,}  MACs {stats['macs'] / 1e9:.3f} G at {s.resolution}x{s.resolution}")
    if scale:
        base = model_stats(args.name)
        r = cfg.rescaled
        print(f"scaled from {cfg.name}: width x{r.width:.4g}, depth x{r.depth:.4g}, resolution {base['input_size']} -> "
              f"{s.resolution} px; params x{stats['params'] / base['params']:.3f}, "
              f"MACs x{stats['macs'] / base['macs']:.3f} over the baseline ({base['macs'] / 1e9:.3f} G)")
    print(f"activation {net.act}, padding {cfg.padding}, BatchNorm eps {cfg.norm_eps} momentum {cfg.norm_momentum}")
    print(f"{'stage':<7}{'block':<15}{'kernel':>6}{'stride':>7}{'expand':>7}{'in':>6}{'out':>6}{'repeats':>8}{'SE':>5}")
    for row in _stage_rows(net):
        stage, block, k, stride, e, cin, cout, n, se = row
        print(f"{stage!s:<7}{block:<15}{k:>6}{stride:>7}{e!s:>7}{cin:>6}{cout:>6}{n:>8}{se!s:>5}")
    resize = (f"squash to {pre.resize_size}x{pre.resize_size} px" if pre.crop_mode == "squash"
              else f"resize shorter side to {pre.resize_size} px")
    print(f"preprocessing: {resize} ({pre.interpolation}), center crop "
          f"{pre.input_size} px (crop_pct {pre.crop_pct:.3f}), mean {tuple(round(m, 4) for m in pre.mean)}, "
          f"std {tuple(round(v, 4) for v in pre.std)}")
    return 0


def _collect_images(inputs: Sequence[str]) -> list[Path]:
    from .data import list_images

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(list_images(p))
        else:
            files.append(p)
    return files


def _build_model(args: argparse.Namespace, warn_random: bool = True):
    """The model the --model/--weights/--pretrained arguments ask for, in eval mode (:func:`effnet.registry.load_model`).

    Without weights the model is randomly initialised; ``warn_random`` says so on stderr
    (not for benchmarks, whose speed does not depend on the weights' values).
    """
    from .registry import ModelChoiceError, load_model

    try:
        model = load_model(args.model, args.weights, args.pretrained)
    except ModelChoiceError as e:
        raise SystemExit(f"error: {e}") from None
    if warn_random and not (args.weights or args.pretrained):
        print(f"note: {args.model} has random weights (no --weights or --pretrained); predictions are meaningless",
              file=sys.stderr)
    return model

def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .data import IMAGE_EXTENSIONS, ImageDecodeError, eval_transform, load_transformed, model_class_names

    files = _collect_images(args.inputs)
    if not files:
        raise SystemExit(f"error: no images found in {', '.join(args.inputs)}: looked for files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)} (folders are searched recursively)")
    model = _build_model(args)
    transform = eval_transform(model.config)
    names = model_class_names(model)
    from .deploy import INT8_ENGINES, build_engine
    from .deploy import calibration_batches

    calibration = calibration_batches(model, args.calibration) if args.engine in INT8_ENGINES else None
    run = build_engine(model, args.engine, model.config.preprocess.input_size, calibration)
    results, failed = [], 0
    t_decode = t_model = 0.0
    for start in range(0, len(files), args.batch_size):
        batch, paths = [], []
        t0 = time.perf_counter()
        for f in files[start:start + args.batch_size]:
            try:
                batch.append(load_transformed(f, transform))
                paths.append(f)
            except (ImageDecodeError, FileNotFoundError) as e:
                failed += 1
                print(f"skipped: {e}", file=sys.stderr)
        t1 = time.perf_counter()
        t_decode += t1 - t0
        if not batch:
            continue
        x = torch.stack(batch)
        with torch.inference_mode():
            probs = run(x).float().softmax(dim=1)
        t_model += time.perf_counter() - t1
        if args.verbose:
            print(f"batch input {tuple(x.shape)} {x.dtype} -> logits {tuple(probs.shape)}", file=sys.stderr)
        top = probs.topk(min(args.topk, probs.shape[1]), dim=1)
        for path, p, idx in zip(paths, top.values.tolist(), top.indices.tolist()):
            results.append(dict(file=str(path), top=[dict(index=i, name=names[i], prob=round(q, 6))
                                                     for i, q in zip(idx, p)]))
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if len(r["top"]) == 1:
                print(f"{r['file']}: {r['top'][0]['name']} {r['top'][0]['prob']:.3f}")
            else:                       # top-k: one line per class, probability first
                print(r["file"])
                for t in r["top"]:
                    print(f"  {t['prob']:6.3f}  {t['name']}")
    n = len(results)
    if n:
        print(f"{n} images ({failed} skipped): decode+preprocess {t_decode:.2f} s, model {t_model:.2f} s "
              f"({n / t_model:.1f} images/s, {args.engine}, batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads)",
              file=sys.stderr)
    if not n:
        print(f"error: none of the {len(files)} images could be read (each is named above)", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .deploy import INT8_ENGINES, calibration_batches
    from .serve.server import Classifier, ServeConfig, bind, serve, warm_up

    config = ServeConfig(max_batch=args.max_batch, batch_timeout_ms=args.batch_timeout_ms,
                         max_upload_mb=args.max_upload_mb, max_files=args.max_files,
                         max_image_mpixels=args.max_image_mpixels)
    app = args.command == "app"
    sock = bind(args.host, args.port)            # a taken port fails now, before the model loads
    model = _build_model(args)
    calibration = calibration_batches(model, args.calibration) if args.engine in INT8_ENGINES else None
    classifier = Classifier(model, args.engine, name=args.model, calibration=calibration)
    warm_up(classifier, (1, min(4, config.max_batch), config.max_batch))
    url = f"http://{args.host}:{args.port}/"
    print(f"{'app' if app else 'serving'} {classifier.name} ({args.engine}, {len(classifier.names)} classes) on "
          f"{url}{'' if app else 'predict'}; Ctrl-C stops", file=sys.stderr, flush=True)
    serve(classifier, args.host, args.port, config, app=app, log_level=args.log_level, sock=sock)
    return 0


def _cmd_predict_batch(args: argparse.Namespace) -> int:
    from .registry import ModelChoiceError
    from .serve.batch import ModelSpec, predict_batch

    from .deploy import INT8_ENGINES

    if args.engine in INT8_ENGINES:
        raise SystemExit("error: predict-batch runs fp32 engines (eager, channels_last, compile, onnx, openvino, "
                         "tflite, executorch)")
    try:
        spec = ModelSpec(args.model, args.weights, args.pretrained, args.engine, args.threads)
    except ModelChoiceError as e:
        raise SystemExit(f"error: {e}") from None
    r = predict_batch(args.sources, args.out, spec, topk=args.topk, batch_size=args.batch_size, runner=args.runner,
                      address=args.address, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                      gpus_per_actor=args.gpus_per_actor, workers=args.workers, chunk=args.chunk,
                      max_file_mb=args.max_file_mb, progress=not args.quiet)
    print(f"{r['images']} images ({r['errors']} errors, {r['skipped']} already in {r['out']}) in {r['seconds']:.1f} s: "
          f"{r['images_per_s']:.1f} images/s ({r['runner']}, {args.engine}, batch {args.batch_size})", file=sys.stderr)
    if args.json:
        print(json.dumps(r))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .data import ImageDataset, eval_transform
    from .evaluation import evaluate

    model = _build_model(args)
    transform = eval_transform(model.config)
    data = Path(args.data)
    if not data.exists():
        raise SystemExit(f"error: --data {data} does not exist; give a folder of <class>/<image> or a CSV "
                         f"with file,class_index columns")
    if data.is_file():
        dataset = ImageDataset.from_csv(data, transform, root=args.root)
    else:
        dataset = ImageDataset.from_folder(data, transform)
    _check_labels(dataset, model, data)
    r = evaluate(model, dataset, batch_size=args.batch_size, workers=args.workers, progress=not args.json)
    if r["images"] == 0:
        first = dataset.samples[0][0] if dataset.samples else data
        raise SystemExit(f"error: none of the {len(dataset)} images listed by {data} could be read "
                         f"({r['skipped']} missing or unreadable, e.g. {first}); check --data and --root")
    if args.json:
        print(json.dumps(r))
    else:
        print(f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  over {r['images']} images "
              f"({r['skipped']} skipped), {r['images_per_s']:.1f} images/s")
    return 0


def _check_labels(dataset, model, data: Path) -> None:
    """Make a labelled set's class indices those of ``model``, or refuse it.

    A folder set whose class names the model knows (``model.class_names``) is mapped onto
    the model's indices; otherwise the sorted folder order is used, as for ImageNet synset
    folders.

    Raises:
        SystemExit: a label outside ``0 .. num_classes - 1`` (CSV: the row is named) or a
            class folder the model does not have.
    """
    n = model.num_classes
    known = list(getattr(model, "class_names", None) or [])
    if dataset.classes is not None:                       # a folder of <class>/<image>
        if known:
            unknown = [c for c in dataset.classes if c not in known]
            if unknown:
                raise SystemExit(f"error: class folders {unknown} of {data} are not classes of the model "
                                 f"({known[:10]}{' ...' if len(known) > 10 else ''})")
            index = {i: known.index(c) for i, c in enumerate(dataset.classes)}
            dataset.samples = [(f, index[y]) for f, y in dataset.samples]
        elif len(dataset.classes) > n:
            raise SystemExit(f"error: {data} has {len(dataset.classes)} class folders but the model has {n} classes")
        return
    for row, (f, y) in enumerate(dataset.samples, start=2):   # row 1 is the header
        if not 0 <= y < n:
            raise SystemExit(f"error: {data} row {row}: class_index {y} ({f.name}) is outside the model's "
                             f"{n} classes (0..{n - 1}); check the labels or the model")


PROGRESSIVE_FIELDS = ("stages", "min_size", "max_size", "min_magnitude", "max_magnitude", "min_mixup", "max_mixup",
                      "min_dropout", "max_dropout")


def _progressive_schedule(args: argparse.Namespace, recipe):
    """``--progressive`` (or the recipe's) with any ``--progressive-*`` value replaced; None: off."""
    from .registry import get_config
    from .train.progressive import progressive_preset

    variant = None if args.progressive == "none" else (args.progressive or recipe.progressive)
    given = {f: getattr(args, f"progressive_{f}") for f in PROGRESSIVE_FIELDS
             if getattr(args, f"progressive_{f}") is not None}
    if variant is None:
        if given:
            raise SystemExit(f"error: --progressive-{next(iter(given)).replace('_', '-')} needs --progressive "
                             f"paper|automl (or a recipe with progressive learning, e.g. --recipe v2)")
        return None
    if not given:
        return variant                       # fit ends the model's Table 6 row at the training size
    cfg = get_config(args.model)
    size = args.image_size or cfg.train_size or cfg.input_size
    try:
        return progressive_preset(args.model, variant, max_size=given.pop("max_size", size), **given)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _distillation(args: argparse.Namespace):
    """The run's Distillation and Unlabeled settings from the --teacher/--kd-*/--unlabeled flags."""
    from .train import Distillation, Unlabeled

    kd_flags = [f for f in ("kd_cache", "kd_class_map", "teacher_weights") if getattr(args, f) is not None]
    if args.teacher is None and kd_flags and not (args.kd_cache and kd_flags == ["kd_cache"]):
        raise SystemExit(f"error: --{kd_flags[-1].replace('_', '-')} needs --teacher (a model name or an effnet folder)")
    if args.unlabeled_ratio is not None and args.unlabeled is None:
        raise SystemExit("error: --unlabeled-ratio needs --unlabeled (a file from effnet pseudo-label)")
    distill = None
    if args.teacher is not None or args.kd_cache is not None:
        distill = Distillation(teacher=args.teacher, teacher_weights=args.teacher_weights,
                               temperature=args.kd_temperature, alpha=args.kd_alpha, kind=args.kd_type,
                               cache=args.kd_cache, class_map=args.kd_class_map)
    # With --teacher, fit checks the labels against the distillation teacher: no second copy.
    unlabeled = Unlabeled(args.unlabeled, ratio=args.unlabeled_ratio or 1.0) if args.unlabeled is not None else None
    return distill, unlabeled


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import fit, get_recipe

    recipe = get_recipe(args.recipe)
    changes = {k: v for k, v in dict(head_only_epochs=args.head_only_epochs, augment=args.augment,
                                     ema_decay=args.ema_decay, dropout=args.dropout, drop_path_rate=args.drop_path,
                                     magnitude=args.magnitude).items() if v is not None}
    if changes:
        recipe = recipe.replace(**changes)
    if args.resume and not args.out:
        raise SystemExit("error: --resume needs --out, the run folder that holds last.pt")
    if args.resume and args.overwrite:
        raise SystemExit("error: give --resume (continue the run in --out) or --overwrite (start it again), not both")
    if args.model is None:
        raise SystemExit("error: --model is required (a name from `effnet models`)")
    progressive = _progressive_schedule(args, recipe)
    if progressive is None and recipe.progressive is not None:
        recipe = recipe.replace(progressive=None)            # --progressive none
    distill, unlabeled = _distillation(args)
    result = fit(args.model, args.data, epochs=args.epochs, batch_size=args.batch_size, recipe=recipe,
                 progressive=progressive, distill=distill, unlabeled=unlabeled,
                 out=args.out, resume=args.resume, overwrite=args.overwrite, pretrained=args.pretrained or False, weights=args.weights,
                 image_size=args.image_size, lr=args.lr, workers=args.workers, seed=args.seed, device=args.device,
                 amp=args.amp, channels_last=args.channels_last, grad_checkpointing=args.grad_checkpointing,
                 accumulation_steps=args.accum_steps, sync_bn=args.sync_bn, val_split=args.val_split)
    if result.history and "val_top1" in result.history[-1]:
        print(f"best val top-1 {result.best_top1:.2f}%"
              + (f"; best weights in {args.out}/best, metrics in {args.out}/metrics.csv" if args.out else ""))
    if result.skipped:
        print(f"{result.skipped} unreadable training images were skipped", file=sys.stderr)
    return 0


def _cmd_distill_cache(args: argparse.Namespace) -> int:
    from .train import write_logit_cache

    r = write_logit_cache(args.teacher, args.data, args.out, teacher_weights=args.teacher_weights,
                          class_map=args.class_map, batch_size=args.batch_size, workers=args.workers,
                          device=args.device)
    print(f"wrote {r['path']}: logits of {r['teacher']} (weights {r['fingerprint']}) on {r['images']} training photos"
          + (f", {r['skipped']} unreadable skipped" if r["skipped"] else ""))
    return 0


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from .train import pseudo_label
    from .train.loop import check_data

    classes = check_data(args.data) if args.data else None
    r = pseudo_label(args.teacher, args.unlabeled, args.out, classes=classes, teacher_weights=args.teacher_weights,
                     class_map=args.class_map, temperature=args.temperature, threshold=args.threshold,
                     balance=not args.no_balance, batch_size=args.batch_size, workers=args.workers,
                     device=args.device)
    print(f"wrote {args.out}: {r['kept']} of {r['images']} photos labeled by {r['teacher']} (weights "
          f"{r['fingerprint']}), {r['rows']} rows after balancing; per class {r['per_class']}"
          + (f"; {r['skipped']} unreadable skipped" if r["skipped"] else ""))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from . import deploy
    from ._io import make_parent

    model = _build_model(args)
    out = Path(args.out)
    size = args.resolution or model.config.preprocess.input_size
    make_parent(out)
    if args.format == "torchscript":
        deploy.export_torchscript(model, out)
    elif args.format == "onnx":
        deploy.export_onnx(model, out, input_size=size)
    elif args.format in deploy.MOBILE_FORMATS:
        return _export_mobile(args, model, out, size)
    else:
        calibration = deploy.calibration_batches(model, args.calibration, size=size)
        with tempfile.TemporaryDirectory(prefix="effnet-export-") as d:      # the fp32 step is not kept
            fp32 = deploy.export_onnx(model, Path(d) / "fp32.onnx", input_size=size)
            deploy.quantize_onnx_int8(fp32, out, calibration)
    print(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MB, {args.format}, input 1x{model.in_chans}x{size}x{size})")
    return 0


def _export_mobile(args: argparse.Namespace, model, out: Path, size: int) -> int:
    """effnet export --format tflite|tflite-int8|executorch|executorch-int8: verified on real photos when there are some."""
    from . import deploy

    int8 = args.format.endswith("-int8")
    try:
        photos = deploy.calibration_batches(model, args.calibration, n=64 if int8 else 8, size=size)
    except ValueError as e:
        if int8:
            raise
        photos = None
        print(f"note: verifying on random input ({e})", file=sys.stderr)
    r = deploy.export_mobile(model, out, args.format, input_size=size, calibration=photos if int8 else None,
                             images=photos)
    v = r["verification"]
    check = (f"top-1 agrees with fp32 eager on {v['top1_agreement']:.1%} of {v['images']} photos"
             if int8 else f"max |diff| to eager {v['max_abs_diff']:.2g} (logits up to {v['logit_scale']:.3g})"
             + (f" on {v['images']} photos" if photos is not None else " on random input"))
    inp = r["input"]
    print(f"wrote {out} ({r['bytes'] / 2 ** 20:.1f} MB, {args.format}, input {inp['layout']} "
          f"{'x'.join(map(str, inp['shape']))} {inp['dtype']}; {check}); metadata in {deploy.mobile.metadata_path(out)}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .analysis import benchmark, format_table
    from .deploy import INT8_ENGINES
    from .deploy import calibration_batches

    if args.threads:
        torch.set_num_threads(args.threads)
    model = _build_model(args, warn_random=False)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    calibration = (calibration_batches(model, args.calibration, size=args.resolution)
                   if set(engines) & set(INT8_ENGINES) else None)
    try:
        sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SystemExit(f"error: --batch-sizes must be a comma list of integers >= 1, got {args.batch_sizes!r}")
    extra = {}
    if args.compare:
        from .analysis import reference_models

        for label, ref in reference_models(model.config.name).items():
            if ref is None:
                print(f"note: {label} is not importable here; left out of the comparison", file=sys.stderr)
            else:
                extra[f"{label} eager"] = ref
    rows = benchmark(model, engines, sizes, args.resolution, args.iters, calibration=calibration, extra=extra,
                     rounds=args.rounds)
    rows = rows[len(extra):] + rows[:len(extra)]          # effnet's engines first, ratios against the first
    res = args.resolution or model.config.preprocess.input_size
    print(f"{model.config.name} at {res}x{res} px, {torch.get_num_threads()} threads, fp32 unless named; "
          f"latency at batch {min(sizes)}, throughput at batch {max(sizes)}; engines timed interleaved "
          f"in {args.rounds} rounds")
    print(format_table(rows))
    return 0


def _model_label(model, fallback: str) -> str:
    """A short column label: the config name, with the rescaling when there is one."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return fallback
    r = getattr(cfg, "rescaled", None)
    if r is None:
        return cfg.name
    return f"{cfg.name} d{r.depth:.3g} w{r.width:.3g} r{cfg.input_size}"


def _cam_models(args: argparse.Namespace) -> list:
    """(label, model) pairs of ``effnet cam``: --model (+ --weights/--pretrained), or each of
    --models (registered names, with --pretrained when given, or effnet folders)."""
    from .registry import from_pretrained
    from .weights import CONFIG_NAME

    if not args.models:
        if args.labels is not None:
            raise SystemExit("error: --labels titles the --models columns; give --models a,b,c with it")
        model = _build_model(args)
        return [(_model_label(model, args.model or str(args.weights)), model)]
    if args.model:
        raise SystemExit("error: give --model (one model) or --models a,b,c (several), not both")
    if args.weights:
        raise SystemExit("error: --weights names one model's file; with --models list effnet folders "
                         "(save_pretrained, a training run's best/) or registered names (with --pretrained)")
    items = [s.strip() for s in args.models.split(",") if s.strip()]
    if not items:
        raise SystemExit(f"error: --models must be a comma list of model names or effnet folders, got {args.models!r}")
    out = []
    for item in items:
        folder = Path(item)
        if folder.is_dir():
            if not (folder / CONFIG_NAME).is_file():
                raise SystemExit(f"error: --models entry {item} is a folder without {CONFIG_NAME}; give an effnet "
                                 f"folder (save_pretrained, a training run's best/) or a registered model name")
            model = from_pretrained(folder).eval()
            label = f"{folder.parent.name}/{folder.name}" if folder.name == "best" else folder.name
        else:
            model = _build_model(argparse.Namespace(model=item, weights=None, pretrained=args.pretrained))
            label = _model_label(model, item)
        out.append((label, model))
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(",")]
        if len(labels) != len(out) or not all(labels):
            raise SystemExit(f"error: --labels gives {len(labels)} name(s) for {len(out)} model(s) in --models; give "
                             f"one non-empty name per model, in the same order")
        out = [(label, model) for label, (_, model) in zip(labels, out)]
    return out


def _cmd_cam(args: argparse.Namespace) -> int:
    import numpy as np

    from .analysis import cam
    from .data import CROP_FUNCTIONS, IMAGE_EXTENSIONS, ImageDecodeError, load_image, model_class_names, to_tensor
    from .plots import _png_path, plot_cam_grid, plot_cam_rows, upsample_cam

    files = _collect_images(args.inputs)
    if not files:
        raise SystemExit(f"error: no images found in {', '.join(args.inputs)}: looked for files ending in "
                         f"{', '.join(IMAGE_EXTENSIONS)} (folders are searched recursively)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} is a file; give a folder for the PNGs")
    # every file written gets its own name, never an input's (--out may be the photos' folder):
    # the grid's (when one is drawn), then <stem>.png per image, <stem>_2.png and on for a name
    # already taken (x.jpg in two folders, a photo named cam_grid.jpg). Names compare case-folded:
    # X.png and x.png are one file on macOS and Windows.
    taken = {_path_key(f) for f in files}
    if args.figure:
        try:
            figure = _png_path(args.figure)
        except ValueError as e:
            raise SystemExit(f"error: --figure: {e}") from None
        if _path_key(figure) in taken:
            raise SystemExit(f"error: --figure {figure} is one of the input images; give another file name")
    else:
        figure = _unused(out, "cam_grid", taken)
    models = _cam_models(args)
    draw_grid = bool(args.figure) or len(files) > 1 or len(models) > 1
    if draw_grid:
        taken.add(_path_key(figure))
    decode = max(m.config.preprocess.resize_size for _, m in models)
    grid, written, failed = [], [], 0
    for f in files:
        try:
            img = load_image(f, min_size=decode)
        except (ImageDecodeError, FileNotFoundError) as e:
            failed += 1
            print(f"skipped: {e}", file=sys.stderr)
            continue
        entries = []
        for label, model in models:
            pre = model.config.preprocess
            crop = CROP_FUNCTIONS[pre.crop_mode](img, pre.resize_size, pre.input_size, pre.interpolation)
            x = to_tensor(crop, pre.mean, pre.std)[None]
            maps, logits = cam(model, x, return_logits=True)
            probs = logits.float().softmax(dim=1)[0]
            names = model_class_names(model)
            top = probs.topk(min(args.topk, probs.numel()))
            k = int(top.indices[0])
            entries.append(dict(label=label, photo=np.asarray(crop),
                                heat=upsample_cam(maps, pre.input_size)[0].numpy(),
                                top=[(names[i], float(p)) for i, p in zip(top.indices.tolist(), top.values)],
                                class_name=names[k], class_prob=float(probs[k])))
            print(f"{f}: {label}: {names[k]} {float(probs[k]):.3f}")
        path = _unused(out, f.stem, taken)
        taken.add(_path_key(path))
        written.append(plot_cam_rows(entries, path, title=f.name))
        grid.append(entries)
    if not grid:
        print(f"error: none of the {len(files)} images could be read (each is named above)", file=sys.stderr)
        return 1
    if draw_grid and (args.figure or len(grid) > 1 or len(models) > 1):
        written.append(plot_cam_grid(grid, figure))
    print(f"wrote {len(written)} PNGs ({failed} images skipped): {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _path_key(path: Path) -> str:
    """A written file's identity for name clashes: the absolute path, case-folded."""
    return os.path.normpath(os.path.abspath(path)).casefold()


def _unused(out: Path, stem: str, taken: set) -> Path:
    """``out/<stem>.png``, or ``<stem>_2.png``, ``_3``... : the first whose :func:`_path_key` is not in ``taken``."""
    path, n = out / f"{stem}.png", 2
    while _path_key(path) in taken:
        path, n = out / f"{stem}_{n}.png", n + 1
    return path


def _grid(text: str) -> dict:
    """``alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05`` -> {name: (start, stop, step)};
    a name left out keeps its default range, ``alpha=1.2`` is the single value 1.2; a name
    given twice is refused (which range was meant is unclear)."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, spec = part.partition("=")
        name = name.strip()
        if name not in ("alpha", "beta", "gamma") or not spec:
            raise argparse.ArgumentTypeError(f"{part!r}: write alpha=START:STOP:STEP (or beta=, gamma=; "
                                             f"alpha=1.2 for one value)")
        if name in grid:
            raise argparse.ArgumentTypeError(f"{name} is given twice; give each of alpha, beta, gamma at most "
                                             f"once, e.g. {name}=1.0:1.4:0.05")
        try:
            nums = [float(x) for x in spec.split(":")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: START:STOP:STEP must be numbers") from None
        if len(nums) == 1:
            nums = [nums[0], nums[0], 1.0]
        if len(nums) != 3:
            raise argparse.ArgumentTypeError(f"{part!r}: write {name}=START:STOP:STEP")
        grid[name] = tuple(nums)
    return grid


def _numbers(text: str) -> tuple:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 1,1.4,1.8") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated finite numbers")
    return values


def _pair(text: str) -> tuple:
    values = _numbers(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give DEPTH,RESOLUTION multipliers, e.g. 2,1.3")
    return values


def _runner_args(args: argparse.Namespace) -> dict:
    return dict(runner=args.runner, address=args.address, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial, trials_per_node=args.trials_per_node,
                time_budget_s=None if args.budget_minutes is None else args.budget_minutes * 60)


def _print_trials(rows: list, score: bool) -> None:
    """The trials table: Eq. 3's nominal factor beside the network's real MACs over the baseline's."""
    head = f"{'trial':<20} {'alpha':>5} {'beta':>5} {'gamma':>5} {'factor':>6} {'x MACs':>6} {'res':>4} " \
           f"{'params':>10} {'MACs':>9} {'top-1':>6} {'top-5':>6} {'ms':>7}" + (f" {'score':>6}" if score else "") \
           + "  status"
    print(head)

    def num(v, width: int, spec: str = ".2f") -> str:
        return format(v, f"{width}{spec}") if isinstance(v, (int, float)) else "-".rjust(width)

    for r in rows:
        print(f"{r['trial']:<20} {num(r['alpha'], 5)} {num(r['beta'], 5)} {num(r['gamma'], 5)} "
              f"{num(r['flops_factor'], 6, '.3f')} {num(r.get('macs_factor'), 6)} {r['resolution']:>4} "
              f"{num(r.get('params'), 10, ',d')} {r['macs'] / 1e6:8.1f}M {num(r.get('top1'), 6)} "
              f"{num(r.get('top5'), 6)} {num(r.get('latency_ms'), 7, '.1f')}"
              + (f" {num(r.get('score'), 6)}" if score else "") + f"  {r['status']}")


def _cmd_search(args: argparse.Namespace) -> int:
    from .plots import plot_trials
    from .search import search

    grid = args.grid or {}
    result = search(args.model, args.data, args.out, epochs=args.epochs, image_size=args.image_size,
                    batch_size=args.batch_size, target=args.target, tolerance=args.tolerance,
                    max_trials=args.max_trials, objective=args.objective, recipe=args.recipe, seed=args.seed,
                    lr=args.lr, workers=args.workers, **{k: grid[k] for k in grid}, **_runner_args(args))
    print(f"\nranking by {args.objective} ({result.trained} trained now):")
    _print_trials(result.rows, score=True)
    if result.winner is not None:
        w = result.winner
        print(f"\nwinner: alpha={w['alpha']:g} beta={w['beta']:g} gamma={w['gamma']:g} "
              f"(alpha*beta^2*gamma^2 = {w['flops_factor']:.3f}), val top-1 {w['top1']:.2f}%")
        paper = [i for i, r in enumerate(result.rows) if (r["alpha"], r["beta"], r["gamma"]) == (1.2, 1.1, 1.15)]
        if paper:
            print(f"the paper's (1.2, 1.1, 1.15) ranks {paper[0] + 1} of {len(result.rows)}")
        print(f"wrote {result.csv} and {plot_trials(result.csv, Path(args.out) / 'search.png')}")
    else:
        print(f"no trial finished; wrote {result.csv}")
    return 0 if result.winner is not None else 1


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .plots import plot_trials
    from .search import sweep

    values = {k: v for k, v in (("width", args.width), ("depth", args.depth), ("resolution", args.resolution),
                                ("compound", args.phi)) if v is not None}
    dims = [d.strip() for d in args.dims.split(",") if d.strip()]
    if not dims:
        raise ValueError(f"--dims {args.dims!r} names no dimension; give a comma list of any of "
                         f"width,depth,resolution,compound (e.g. --dims width,depth)")
    result = sweep(args.model, args.data, args.out, dims=dims, values=values, width_at=args.width_at or (),
                   max_macs=args.max_macs, epochs=args.epochs, image_size=args.image_size,
                   batch_size=args.batch_size, recipe=args.recipe, seed=args.seed, lr=args.lr, workers=args.workers,
                   **_runner_args(args))
    print(f"\nsweep ({result.trained} trained now):")
    for r in result.rows:
        top1 = f"{r['top1']:6.2f}" if isinstance(r.get("top1"), (int, float)) else "     -"
        print(f"  {r['dim']:<22} w={r['width']:<5g} d={r['depth']:<5g} r={r['resolution']:<4} "
              f"{r['macs'] / 1e6:9.1f}M MACs  top-1 {top1}  {r['status']}")
    if result.winner is None:
        print(f"no trial finished; wrote {result.csv}")
        return 1
    print(f"wrote {result.csv} and {plot_trials(result.csv, Path(args.out) / 'sweep.png')}")
    return 0


def _add_trial_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared by search and sweep: the proxy task, the training budget, the runner."""
    p.add_argument("--model", required=True, help="the baseline to scale (efficientnet_b0, resnet50, ...)")
    p.add_argument("--data", required=True, help="the proxy task: train/<class>/ and val/<class>/ (or <class>/)")
    p.add_argument("--out", required=True, help="study folder: trials/<name>/ run folders, trials.csv, a PNG; "
                                                "re-run with the same --out to continue")
    p.add_argument("--epochs", type=POSITIVE, default=10, help="training epochs per trial (default 10)")
    p.add_argument("--image-size", type=_count(8), default=None,
                   help="the baseline's resolution in pixels; trials scale it (default: the model's)")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--recipe", default="paper", help="training recipe of every trial (default paper)")
    p.add_argument("--lr", type=_real(0.0), default=None, help="peak learning rate (default: the recipe's rule)")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--workers", type=NON_NEGATIVE, default=0, help="DataLoader processes per trial (default 0)")
    p.add_argument("--runner", choices=["auto", "ray", "local"], default="auto",
                   help="ray: Ray Tune (pip install 'effnet[search]'); local: one after another in process; "
                        "auto: ray when installed")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: a local Ray instance)")
    p.add_argument("--cpus-per-trial", type=POSITIVE, default=None,
                   help="CPUs (threads) per trial (default: 1 with Ray, all cores in process)")
    p.add_argument("--gpus-per-trial", type=_real(0.0, low_closed=True), default=0.0, help="GPUs per trial with Ray (default 0)")
    p.add_argument("--trials-per-node", type=POSITIVE, default=None,
                   help="with Ray and no --cpus-per-trial: trials packed per machine")
    p.add_argument("--budget-minutes", type=_real(0.0), default=None,
                   help="start no trial after this long; refused up front if one epoch cannot fit")


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_family, plot_run

    if args.what == "family":
        path = plot_family(args.out)
    else:
        path = plot_run(args.run_dir, args.out)
    print(f"wrote {path}")
    return 0


def _count(minimum: int):
    """argparse type: an integer >= ``minimum`` (0 is never "default")."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = "integer"
    return parse


def _real(low: float, high: Optional[float] = None, low_closed: bool = False, high_closed: bool = False):
    """argparse type: a finite number between ``low`` and ``high``, each end open unless closed."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        below = value < low if low_closed else value <= low
        above = high is not None and (value > high if high_closed else value >= high)
        if not math.isfinite(value) or below or above:
            raise argparse.ArgumentTypeError(f"must be in {'[' if low_closed else '('}{low:g}, "
                                             f"{'inf' if high is None else f'{high:g}'}{']' if high_closed else ')'}"
                                             f", got {text}")
        return value
    parse.__name__ = "number"
    return parse


POSITIVE, NON_NEGATIVE = _count(1), _count(0)


def _port(text: str) -> int:
    """argparse type: a TCP port, 0..65535 (0: any free port)."""
    value = NON_NEGATIVE(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is at most 65535, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="model name (effnet models); optional with an effnet --weights folder")
    p.add_argument("--weights", default=None, help="weight file, URL or effnet folder (any supported format)")
    p.add_argument("--pretrained", nargs="?", const=True, default=None,
                   help="use the registered ImageNet weights (optionally a tag: timm, torchvision, ...)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="effnet", description="EfficientNet models: list, inspect, predict, evaluate, train.")
    parser.add_argument("--version", action="version", version=f"effnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="table of models: params, MACs, input size, pretrained weights")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name filter, e.g. '*lite*'")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("info", help="the resolved configuration of one model, stage by stage, optionally scaled")
    p.add_argument("name")
    g = p.add_argument_group("scaling (paper Eq. 3)", "scale the registered network: --phi, or any of "
                                                      "--width/--depth/--resolution")
    g.add_argument("--phi", type=_real(-math.inf), default=None, help="compound coefficient: d = alpha^phi, w = beta^phi, "
                                                             "r = gamma^phi")
    g.add_argument("--alpha", type=_real(0.0), default=None, help="depth base (default 1.2)")
    g.add_argument("--beta", type=_real(0.0), default=None, help="width base (default 1.1)")
    g.add_argument("--gamma", type=_real(0.0), default=None, help="resolution base (default 1.15)")
    g.add_argument("--width", type=_real(0.0), default=None, help="width multiplier")
    g.add_argument("--depth", type=_real(0.0), default=None, help="depth multiplier")
    g.add_argument("--resolution", type=_resolution, default=None,
                   help="pixels (an integer, 288) or a multiplier (1.3, rounded to a multiple of 8 px)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("predict", help="top-k classes of images or folders of images")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    _add_model_args(p)
    p.add_argument("--topk", type=POSITIVE, default=5)
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--engine", default="eager",
                   help="eager, channels_last, compile, onnx, openvino, onnx-int8, openvino-int8, tflite, "
                        "tflite-int8, executorch or executorch-int8; the INT8 ones calibrate on --calibration")
    p.add_argument("--calibration", default=None, help="image folder for INT8 calibration (default: ImageNet samples)")
    p.add_argument("-v", "--verbose", action="store_true", help="print batch shapes")
    p.set_defaults(func=_cmd_predict)

    for name, text in (("serve", "HTTP inference server with dynamic batching: /predict, /predict/batch, /health, "
                                 "/metadata, /metrics"),
                       ("app", "a web page to try a model: upload a photo, see the top-5 and its class activation map")):
        p = sub.add_parser(name, help=text)
        _add_model_args(p)
        p.add_argument("--engine", default="onnx" if name == "serve" else "eager",
                       help="eager, channels_last, compile, onnx, openvino, onnx-int8 or openvino-int8 "
                            f"(default {'onnx' if name == 'serve' else 'eager'})")
        p.add_argument("--calibration", default=None, help="image folder for INT8 calibration")
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
        p.add_argument("--port", type=_port, default=8000 if name == "serve" else 7860)
        p.add_argument("--max-batch", type=POSITIVE, default=16, help="most images per engine call")
        p.add_argument("--batch-timeout-ms", type=_real(0, low_closed=True), default=5.0,
                       help="longest an image waits for requests in flight to join its batch, ms")
        p.add_argument("--max-upload-mb", type=_real(0), default=20.0,
                       help="largest request body, MiB")
        p.add_argument("--max-files", type=POSITIVE, default=64, help="most images in one /predict/batch request")
        p.add_argument("--max-image-mpixels", type=_real(0), default=89.478485,
                       help="largest image an upload may declare, millions of pixels (default and most: 89.5, "
                            "Pillow's bomb limit; decoding costs ~10 ms per million)")
        p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
        p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("predict-batch", help="classify a folder tree, glob or file list of any size into Parquet "
                                             "(Ray Data, or in-process without Ray); resumable")
    p.add_argument("sources", nargs="+", help="folders (recursive), globs ('photos/**/*.jpg'), .txt lists of paths, "
                                              "image files")
    p.add_argument("--out", required=True, help="Parquet dataset folder (e.g. results.parquet); paths already in it "
                                                "are skipped")
    _add_model_args(p)
    p.add_argument("--engine", default="eager", help="eager, channels_last, compile, onnx or openvino")
    p.add_argument("--topk", type=POSITIVE, default=5)
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="images per engine call")
    p.add_argument("--runner", choices=["auto", "ray", "local"], default="auto",
                   help="ray: Ray Data actor pool; local: DataLoader workers in this process; auto: ray when installed")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001 or auto); default: local Ray")
    p.add_argument("--actors", type=POSITIVE, default=1, help="Ray actors, each with its own model")
    p.add_argument("--cpus-per-actor", type=_real(0), default=1.0)
    p.add_argument("--gpus-per-actor", type=_real(0, low_closed=True), default=0.0)
    p.add_argument("--threads", type=POSITIVE, default=None, help="torch/engine threads per model (default: torch's)")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="DataLoader workers of the in-process runner")
    p.add_argument("--chunk", type=POSITIVE, default=1024, help="rows per Parquet part file")
    p.add_argument("--max-file-mb", type=_real(0), default=64.0, help="larger files get an error row (at most this much of one is read)")
    p.add_argument("--json", action="store_true", help="print the run's counts as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict_batch)

    p = sub.add_parser("evaluate", help="top-1 / top-5 over an image folder (class subfolders) or a labels CSV")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="folder of <class>/<image>, or a CSV with file,class_index")
    p.add_argument("--root", default=None, help="folder the CSV's file names are relative to")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="DataLoader worker processes decoding images")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("train", help="train or fine-tune on an image folder (torchrun for several processes)")
    _add_model_args(p)
    p.add_argument("--data", required=True, help="folder with train/ and val/ class subfolders, or one folder to split")
    p.add_argument("--epochs", type=POSITIVE, required=True)
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="images per step per process")
    p.add_argument("--recipe", default="paper", help="paper, finetune, v2 (EfficientNetV2: progressive learning on) or noisy-student (finetune + the paper's noise)")
    p.add_argument("--out", default=None, help="run folder: last.pt, best/, metrics.csv, tb/, curves.png")
    p.add_argument("--progressive", choices=["paper", "automl", "none"], default=None,
                   help="progressive learning (EfficientNetV2 Sec. 4.2): image size, RandAugment magnitude, mixup "
                        "and dropout grow over stages; the model's Table 6 row, ending at the training size "
                        "(default: the recipe's; none turns it off)")
    for f in PROGRESSIVE_FIELDS:
        p.add_argument(f"--progressive-{f.replace('_', '-')}", type=int if f in ("stages", "min_size", "max_size")
                       else float, default=None, help=argparse.SUPPRESS if f != "stages" else
                       "stages of the schedule (4); likewise --progressive-{min,max}-{size,magnitude,mixup,dropout}")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (else it is refused)")
    p.add_argument("--image-size", type=POSITIVE, default=None,
                   help="training resolution in pixels (default: the model's, times the recipe's train_size_scale)")
    p.add_argument("--lr", type=_real(0.0), default=None, help="peak learning rate (default: recipe per 256 images)")
    p.add_argument("--head-only-epochs", type=NON_NEGATIVE, default=None)
    p.add_argument("--augment", default=None, help="autoaugment, randaugment or none")
    p.add_argument("--ema-decay", type=_real(0.0, 1.0), default=None)
    p.add_argument("--val-split", type=_real(0.0, 1.0), default=0.2, help="val fraction when DATA has no val/ folder")
    p.add_argument("--workers", type=NON_NEGATIVE, default=2)
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (fp16 + gradient scaling on GPUs without bf16); default: on for CUDA")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--accum-steps", type=POSITIVE, default=1, help="gradient accumulation micro-batches")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes")
    p.add_argument("--dropout", type=_real(0.0, 1.0, low_closed=True), default=None, help="classifier dropout (default: the recipe's "
                   "or the model's)")
    p.add_argument("--drop-path", type=_real(0.0, 1.0, low_closed=True), default=None,
                   help="stochastic depth rate of the last block (default: the recipe's)")
    p.add_argument("--magnitude", type=_real(0.0, 30.0, low_closed=True), default=None,
                   help="RandAugment magnitude, TF scale (10 = full range; default: the recipe's)")
    g = p.add_argument_group("knowledge distillation (Hinton et al. 2015)")
    g.add_argument("--teacher", default=None, help="teacher: a model name (its registered weights, or "
                   "--teacher-weights) or an effnet folder such as a run's best/")
    g.add_argument("--teacher-weights", default=None, help="weight file or folder for a teacher given by name")
    g.add_argument("--kd-temperature", type=_real(0.0), default=4.0, help="softmax temperature T (default 4)")
    g.add_argument("--kd-alpha", type=_real(0.0, 1.0, low_closed=True, high_closed=True), default=0.5,
                   help="weight of the teacher's term; 1 - alpha weighs the labels (default 0.5)")
    g.add_argument("--kd-type", choices=["soft", "hard"], default="soft",
                   help="soft: T^2 * KL of softened outputs; hard: CE on the teacher's argmax")
    g.add_argument("--kd-cache", default=None, help="teacher logits from effnet distill-cache (no teacher per step)")
    g.add_argument("--kd-class-map", default=None,
                   help="JSON file: data class -> teacher class name or index, when the class lists differ")
    g = p.add_argument_group("Noisy Student (Xie et al. 2020)")
    g.add_argument("--unlabeled", default=None, help="pseudo-labels from effnet pseudo-label (Parquet); with "
                   "--teacher they must be that teacher's")
    g.add_argument("--unlabeled-ratio", type=_real(0.0), default=None,
                   help="pseudo-labeled images per labeled image in each step (default 1)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("distill-cache", help="run a teacher once over the training photos and save its logits")
    p.add_argument("--teacher", required=True, help="model name (registered weights or --teacher-weights) or effnet folder")
    p.add_argument("--teacher-weights", default=None)
    p.add_argument("--data", required=True, help="the training data folder, as given to effnet train")
    p.add_argument("--out", required=True, help="the cache file (.safetensors)")
    p.add_argument("--class-map", default=None, help="JSON: data class -> teacher class, when they differ")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--workers", type=NON_NEGATIVE, default=2)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_distill_cache)

    p = sub.add_parser("pseudo-label", help="soft labels from a teacher for a folder of unlabeled photos (Noisy Student)")
    p.add_argument("unlabeled", help="folder of unlabeled photos (searched recursively)")
    p.add_argument("--teacher", required=True, help="model name (registered weights or --teacher-weights) or effnet folder")
    p.add_argument("--teacher-weights", default=None)
    p.add_argument("--out", required=True, help="Parquet file: path, label, confidence, probs, copy")
    p.add_argument("--data", default=None, help="label with this training folder's classes (default: the teacher's)")
    p.add_argument("--class-map", default=None, help="JSON: data class -> teacher class, when they differ")
    p.add_argument("--threshold", type=_real(0.0, 1.0, low_closed=True), default=0.0,
                   help="drop photos whose top probability is below this (the paper: 0.3 on ImageNet)")
    p.add_argument("--temperature", type=_real(0.0), default=1.0, help="softmax temperature of the soft labels")
    p.add_argument("--no-balance", action="store_true", help="do not duplicate photos to balance the classes")
    p.add_argument("--batch-size", type=POSITIVE, default=32)
    p.add_argument("--workers", type=NON_NEGATIVE, default=2)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cmd_pseudo_label)

    p = sub.add_parser("export", help="export to ONNX (verified), INT8 ONNX, TorchScript, or for phones: "
                                      "LiteRT (TFLite) and ExecuTorch, fp32 and INT8 (verified)")
    _add_model_args(p)
    p.add_argument("--format", choices=["onnx", "onnx-int8", "torchscript", "tflite", "tflite-int8", "executorch",
                                        "executorch-int8"], default="onnx",
                   help="the mobile formats need pip install 'effnet[mobile]'; their layout and preprocessing "
                        "are in <out>.json")
    p.add_argument("--out", required=True)
    p.add_argument("--resolution", type=POSITIVE, default=None, help="input side in pixels (default: the model's)")
    p.add_argument("--calibration", default=None, help="image folder for INT8 calibration (default: ImageNet samples)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bench", help="latency, throughput, memory and GFLOP/s per inference engine")
    _add_model_args(p)
    p.add_argument("--engines", default="eager,channels_last,onnx",
                   help="comma list of eager, channels_last, compile, onnx, openvino, onnx-int8, openvino-int8, "
                        "tflite, tflite-int8, executorch, executorch-int8")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--resolution", type=POSITIVE, default=None)
    p.add_argument("--iters", type=POSITIVE, default=10)
    p.add_argument("--threads", type=POSITIVE, default=None)
    p.add_argument("--calibration", default=None, help="image folder for INT8 calibration (default: ImageNet samples)")
    p.add_argument("--rounds", type=POSITIVE, default=3, help="interleaved timing rounds over all engines")
    p.add_argument("--compare", action="store_true",
                   help="add the timm, torchvision and EfficientNet-PyTorch models (eager) where importable")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("cam", help="class activation maps (Zhou et al. 2016): a PNG per image, one grid for all")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    _add_model_args(p)
    p.add_argument("--models", default=None,
                   help="comma list of model names (with --pretrained when given) or effnet folders: a column per "
                        "model in the grid, like paper Fig. 7 (baseline, deeper, wider, higher resolution, compound)")
    p.add_argument("--labels", default=None,
                   help="comma list of column titles, one per --models entry (e.g. baseline,deeper,wider,"
                        "resolution,compound; default: the model's name or folder)")
    p.add_argument("--out", required=True, help="folder for <image>.png (photo, CAM overlay, top-k per model)")
    p.add_argument("--figure", default=None,
                   help="the grid of all images and models, a .png (default OUT/cam_grid.png, written for >1 image "
                        "or model)")
    p.add_argument("--topk", type=POSITIVE, default=5)
    p.set_defaults(func=_cmd_cam)

    p = sub.add_parser("plot", help="figures: the family's top-1 against MACs/params, a run's curves or trials")
    what = p.add_subparsers(dest="what", required=True)
    q = what.add_parser("family", help="published top-1 against MACs and params of the registered models")
    q.add_argument("--out", required=True, help="PNG file to write")
    q.set_defaults(func=_cmd_plot)
    q = what.add_parser("run", help="a training run (metrics.csv) or a search/sweep folder (trials.csv)")
    q.add_argument("run_dir", help="the folder given to --out of effnet train, search or sweep")
    q.add_argument("--out", default=None, help="PNG file (default: RUN_DIR/curves.png or RUN_DIR/trials.png)")
    q.set_defaults(func=_cmd_plot)

    p = sub.add_parser("search", help="grid search of alpha, beta, gamma at phi=1 on a proxy task (paper step 1)")
    _add_trial_args(p)
    p.add_argument("--grid", type=_grid, default=None,
                   help="alpha=1.0:1.4:0.05,beta=1.0:1.3:0.05,gamma=1.0:1.3:0.05 (the default; stop included)")
    p.add_argument("--target", type=_real(0.0), default=2.0, help="FLOPs factor alpha*beta^2*gamma^2 (default 2)")
    p.add_argument("--tolerance", type=_real(0.0, low_closed=True), default=0.1, help="|factor - target| allowed (default 0.1)")
    p.add_argument("--max-trials", type=POSITIVE, default=None, help="keep N candidates spread over the grid")
    p.add_argument("--objective", choices=["top1", "macs", "latency"], default="top1",
                   help="rank by top-1, or by the paper's ACC*(X/T)^-0.07 with X the MACs or latency")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("sweep", help="scale one dimension at a time, and along phi (paper Figs. 3, 4, 8)")
    _add_trial_args(p)
    p.add_argument("--dims", default="width,depth,resolution,compound", help="any of width,depth,resolution,compound")
    p.add_argument("--width", type=_numbers, default=None, help="width multipliers (default 1,1.4,1.8,2.6,3.8,5)")
    p.add_argument("--depth", type=_numbers, default=None, help="depth multipliers (default 1,2,3,4,6,8)")
    p.add_argument("--resolution", type=_numbers, default=None, help="resolution multipliers (default 1,1.3,1.7,2.2,2.5)")
    p.add_argument("--phi", type=_numbers, default=None, help="compound phi values (default 0,1,2,3,4)")
    p.add_argument("--width-at", type=_pair, action="append", default=None, metavar="DEPTH,RES",
                   help="add the width values at this depth and resolution multiplier (Fig. 4); repeatable")
    p.add_argument("--max-macs", type=_real(0.0), default=None, help="leave out points above this many MACs")
    p.set_defaults(func=_cmd_sweep)
    return parser


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (kill, a scheduler's stop) into SystemExit, so that ``finally`` blocks and
    temporary-folder finalizers run and no temporary file outlives the command."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, stop)


def _pretrained_before_a_path(argv: Sequence[str]) -> List[str]:
    """``argv`` with a bare ``--pretrained`` moved to the end when a path follows it.

    ``--pretrained`` takes an optional tag (``--pretrained timm``), so argparse would read
    ``effnet predict --model M --pretrained photo.jpg`` as the tag ``photo.jpg``. A token that
    names an existing file, has a path separator or glob character, or ends in an image or
    list extension is never a tag; moved to the end, the flag keeps its default tag and the
    paths their order.
    """
    from .data import IMAGE_EXTENSIONS

    argv = list(argv)
    for i, token in enumerate(argv[:-1]):
        after = argv[i + 1]
        if token != "--pretrained" or after.startswith("-"):
            continue
        if (os.path.exists(after) or any(c in after for c in "/\\*?[")
                or os.path.splitext(after)[1].lower() in (*IMAGE_EXTENSIONS, ".txt", ".lst")):
            return argv[:i] + argv[i + 1:] + ["--pretrained"]
    return argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``effnet`` console script; returns the exit status."""
    args = build_parser().parse_args(_pretrained_before_a_path(sys.argv[1:] if argv is None else argv))
    _exit_on_sigterm()
    try:
        return args.func(args)
    except KeyError as e:  # unknown model names carry their suggestion in the message
        message = str(e.args[0])
        print(f"error: {message.replace('effnet.list_models()', '`effnet models`')}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError, ImportError, TypeError, FloatingPointError) as e:
        # bad files, downloads, weights, extras, arguments, a diverging run: one line, exit 1
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
