#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures of the `cnn` and `isfm` encoders:
crates/engine/tests/fixtures/{cnn,isfm}_reference.json.

Each holds a small encoder of `../shared/reference/encoders_ref.py` (its constructor arguments),
its weights and buffers under PyTorch's names, an input batch (and for the ISFM its sampling rates and patch
starts), and what PyTorch computes in training mode (dropout off): the embeddings z, the gradient
of L = sum(z * r) for a given r with respect to every parameter, and the running statistics after
that forward; then, in evaluation mode, the embeddings of the same batch (the ISFM with its evenly
spaced patches). `crates/engine/tests/parity.rs` checks the engine against these numbers, so CI
needs no torch.

  python3 scripts/make_encoder_fixtures.py [--reference ../shared/reference]
"""
import argparse, json, os, sys

import torch


def tensor_list(t):
    return [float(v) for v in t.detach().double().flatten().tolist()]


def run(model, forward_train, forward_eval, inputs, config, path):
    buffers_before = {n: tensor_list(b) for n, b in model.named_buffers()}
    model.train()
    z = forward_train()
    r = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    model.zero_grad()
    (z * r).sum().backward()
    params = {n: tensor_list(p) for n, p in model.named_parameters()}
    grads = {n: tensor_list(p.grad) for n, p in model.named_parameters()}
    buffers = {n: tensor_list(b) for n, b in model.named_buffers()}
    model.eval()
    with torch.no_grad():
        z_eval = forward_eval()
    out = dict(torch=torch.__version__, config=config, inputs=inputs, params=params, r=tensor_list(r),
               z=tensor_list(z), grads=grads, buffers_before=buffers_before, buffers_after=buffers, z_eval=tensor_list(z_eval))
    with open(path, 'w') as f:
        json.dump(out, f)
    print(f'wrote {path}: {sum(len(v) for v in params.values())} parameters, z {tuple(z.shape)}')


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--reference', default=os.path.join(here, '..', '..', 'shared', 'reference'))
    ap.add_argument('--out', default=os.path.join(here, '..', 'crates', 'engine', 'tests', 'fixtures'))
    a = ap.parse_args()
    sys.path.insert(0, a.reference)
    from encoders_ref import CNN, ISFM
    os.makedirs(a.out, exist_ok=True)
    torch.manual_seed(0)

    # CNN: the reference's first layer (k64 s16 p24) and three narrower blocks on W = 128.
    B, W, C = 4, 128, 2
    cnn = CNN(C, embedding_dim=8, widths=(4, 6, 5))
    with torch.no_grad():  # non-trivial BatchNorm affine parameters and running statistics
        for m in cnn.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5); m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2); m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(B, W, C)
    run(cnn, lambda: cnn(x), lambda: cnn(x), dict(x=tensor_list(x), batch=B),
        dict(kind='cnn', window=W, channels=C, embedding_dim=8, widths=[4, 6, 5]), os.path.join(a.out, 'cnn_reference.json'))

    # ISFM: two layers, GELU, two channels with 1-channel patches, distinct sampling rates.
    B, W, C = 3, 64, 2
    kw = dict(num_patches=6, patch_size_L=8, patch_size_C=1, d_model=16, num_heads=2, e_layers=2, d_ff=24, dropout=0.0, activation='gelu', embedding_dim=8)
    isfm = ISFM(C, W, **kw)
    with torch.no_grad():
        isfm.norm.weight.uniform_(0.5, 1.5); isfm.norm.bias.uniform_(-0.5, 0.5)
        isfm.norm.running_mean.uniform_(-0.2, 0.2); isfm.norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(B, W, C)
    fs = torch.tensor([12000.0, 100.0, 48000.0])
    g = torch.Generator().manual_seed(3)
    sL = torch.randint(0, W - kw['patch_size_L'] + 1, (B, kw['num_patches']), generator=g)
    sC = torch.randint(0, C - kw['patch_size_C'] + 1, (B, kw['num_patches']), generator=g)
    run(isfm, lambda: isfm(x, fs, sL, sC), lambda: isfm(x, fs), dict(x=tensor_list(x), batch=B, fs=tensor_list(fs), sL=sL.flatten().tolist(), sC=sC.flatten().tolist()),
        dict(kind='isfm', window=W, channels=C, **kw), os.path.join(a.out, 'isfm_reference.json'))


if __name__ == '__main__':
    main()
