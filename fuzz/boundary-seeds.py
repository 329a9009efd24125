# Boundary seeds: every declared size around each limit, built by hand from
# the targets' read order (fuzz-targets/src/*.rs). cmin keeps one input per
# coverage feature, so the sizes just past a limit would otherwise be lost.
import os, struct
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'corpus')
def put(target, name, data):
    with open(os.path.join(root, target, 'boundary-' + name), 'wb') as f:
        f.write(bytes(data))
le = lambda v: list(struct.pack('<H', v))
# dispatch_header: [kind, wanted=1, not-null, aligned(0)/misaligned(1,1), version=wanted(1), declared=u8(1), size]
for kind, name in ((0, 'provider'), (1, 'client')):
    for size in range(0, 27):
        put('dispatch_header', f'{name}-table-size-{size}', [kind, 1, 1, 0, 1, 1, size])
    put('dispatch_header', f'{name}-table-misaligned', [kind, 1, 1, 1, 1, 1, 1, 24])
# characteristics: [2, ours 1..=1, not-null, declared=u8(1), size, min 1, max 1]
for size in range(0, 9):
    put('dispatch_header', f'chars-size-{size}', [2, 1, 1, 1, 1, size, 1, 1])
# peer_attach: a well-formed fake, one field swept.
def case(side, chars=None, table=None, info=None):
    d = [0, 0, side, 1, 0, 0, 0]          # order, seed, side, versions, same-side, fake-first, unload
    d += [1, 1, 2, 3, 0, 0, 0, 0]          # instance Version, Size, NpiId ours, module id, Number
    d += [1] + ([0] + le(chars) if chars is not None else [1]) + [1, 1, 0]   # chars: declared, 1..=1, fill
    d += [2, 1] if table is None else [1] + le(1) + le(table) + [0]          # table
    d += [0, 1, 1, 1, 2]                   # SUCCESS, context, no decline, outs, right answer
    d += [1] + le(info) if info is not None else [0]
    return d + list(b'payload!')
for size in range(0, 9):
    put('peer_attach', f'client-chars-size-{size}', case(1, chars=size))
    put('peer_attach', f'provider-chars-size-{size}', case(0, chars=size))
for info in range(0, 10):
    put('peer_attach', f'client-info-size-{info}', case(1, info=info))
for size in (3, 4, 15, 16, 17):
    put('peer_attach', f'client-table-size-{size}', case(1, table=size))
for size in (3, 4, 23, 24, 25):
    put('peer_attach', f'provider-table-size-{size}', case(0, table=size))
