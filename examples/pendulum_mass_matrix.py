"""The mass matrix of an n-link planar pendulum as the Hessian of its kinetic energy.

Point masses m_k at the ends of rigid links of lengths l_k, angles q_k from the vertical,
angular speeds u_k.  The kinetic energy T is quadratic in the speeds, T = u^T M(q) u / 2, so
the mass matrix is its Hessian in the speeds: M[i, j] = d²T / du_i du_j.

Run: python examples/pendulum_mass_matrix.py   (checks M against sympy.physics.mechanics'
LagrangesMethod and evaluates it at 100,000 states with the compiled f.hessian)
"""

import sympy as sp

import symgrad as sg

LINKS = 3
q = sp.symbols(f"q1:{LINKS + 1}", real=True)
u = sp.symbols(f"u1:{LINKS + 1}", real=True)
m = sp.symbols(f"m1:{LINKS + 1}", positive=True)
l = sp.symbols(f"l1:{LINKS + 1}", positive=True)  # noqa: E741 - the links' lengths

# velocity of mass k: the sum of the rotations of the links up to k
vx = [sum(l[i] * sp.cos(q[i]) * u[i] for i in range(k + 1)) for k in range(LINKS)]
vy = [sum(l[i] * sp.sin(q[i]) * u[i] for i in range(k + 1)) for k in range(LINKS)]
kinetic_energy = sum(m[k] / 2 * (vx[k] ** 2 + vy[k] ** 2) for k in range(LINKS))
pendulum_kinetic_energy = sg.Model("pendulum_kinetic_energy", kinetic_energy, wrt=list(u))


def mass_matrix() -> sp.Matrix:
    """d²T / du_i du_j from sg.hessian, as an explicit matrix."""
    blocks = sg.hessian(kinetic_energy, list(u))
    return sp.Matrix(LINKS, LINKS, lambda i, j: blocks[(u[i], u[j])])


def lagrange_mass_matrix() -> sp.Matrix:
    """The same system through sympy.physics.mechanics, in the same symbols."""
    import sympy.physics.mechanics as me

    t = me.dynamicsymbols._t
    angles = me.dynamicsymbols(f"q1:{LINKS + 1}")
    frame, origin = me.ReferenceFrame("N"), me.Point("O")
    origin.set_vel(frame, 0)
    particles, point = [], origin
    for k in range(LINKS):
        nxt = point.locatenew(f"P{k + 1}", l[k] * sp.sin(angles[k]) * frame.x
                              - l[k] * sp.cos(angles[k]) * frame.y)
        nxt.set_vel(frame, nxt.pos_from(origin).dt(frame))
        particles.append(me.Particle(f"pa{k + 1}", nxt, m[k]))
        point = nxt
    lagrangian = me.Lagrangian(frame, *particles)
    method = me.LagrangesMethod(lagrangian, angles)
    method.form_lagranges_equations()
    plain = {**{a.diff(t): s for a, s in zip(angles, u)}, **dict(zip(angles, q))}
    return method.mass_matrix.subs(plain)


if __name__ == "__main__":
    import time

    import numpy as np

    start = time.perf_counter()
    M = mass_matrix()
    symgrad_time = time.perf_counter() - start
    start = time.perf_counter()
    reference = lagrange_mass_matrix()
    lagrange_time = time.perf_counter() - start
    difference = (M - reference).applyfunc(lambda e: sp.simplify(sp.expand_trig(e)))
    print(f"M[0, 0] = {sp.simplify(M[0, 0])}\nM[0, 1] = {sp.simplify(M[0, 1])}")
    print(f"sg.hessian: {symgrad_time * 1e3:.0f} ms; LagrangesMethod: {lagrange_time * 1e3:.0f}"
          f" ms; M - M_Lagrange = 0: {difference == sp.zeros(LINKS, LINKS)}")

    f = pendulum_kinetic_energy.compiled
    rng = np.random.default_rng(0)
    states = 100_000
    inputs = {**{s.name: rng.normal(size=states) for s in q + u},
              **{s.name: 1.0 + rng.random() for s in m + l}}
    start = time.perf_counter()
    f.hessian(**inputs)
    first = time.perf_counter() - start
    start = time.perf_counter()
    H = f.hessian(**inputs)
    again = time.perf_counter() - start
    numeric = sp.lambdify(q + m + l, reference, "numpy")
    k = 7
    at = numeric(*[inputs[s.name][k] if s in q else inputs[s.name] for s in q + m + l])
    got = np.array([[H[(a.name, b.name)][k] for b in u] for a in u])
    print(f"f.hessian at {states:,} states: first call (compiles) {first:.1f} s, then "
          f"{again * 1e3:.1f} ms; max |M - M_Lagrange| at one state: "
          f"{np.abs(got - np.asarray(at, dtype=float)).max():.1e}")
