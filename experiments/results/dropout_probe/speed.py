import sys, time, torch
exec(open('prof.py').read().split("win = training.LogWindow()")[0])
win = training.LogWindow()
def timeit(tag, n=6):
    for _ in range(2): training.train_step(run, win)
    t = time.time()
    for _ in range(n): training.train_step(run, win)
    print(tag, "s/step", round((time.time() - t) / n, 3), flush=True)
timeit("baseline")
for l in run.model.layers: l.attention.dropout_p = 0.0
timeit("no attention dropout")
for m in run.model.modules():
    if isinstance(m, torch.nn.Dropout): m.p = 0.0
timeit("no dropout")
for l in run.model.layers: l.attention.dropout_p = 0.1
timeit("attention dropout only")
