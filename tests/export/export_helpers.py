"""What several export test files share."""

#: a tiny trajectory model, dopri5 in training, exported at rk4 x 32: the precision and runtime
#: tests check graphs of it
TINY_SPEC = """
odespec: 1
name: tiny
seed: 0
input: {shape: [2]}
model:
  - linear: 8
  - ode:
      t: [0, 0.5, 1]
      output: trajectory
      dynamics: {time: concat, layers: [linear: 16, tanh, linear: 8]}
      solver: {method: dopri5, rtol: 1e-7, atol: 1e-9}
  - linear: 2
export:
  onnx: {method: rk4, steps: 32}
"""
