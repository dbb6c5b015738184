"""The built-in Runge-Kutta methods and the method registry.

Torch- and numpy-free (the spec validator imports this module to learn method names, orders and
adaptivity). Coefficients are exact rationals where the method has them, otherwise the published
decimal expansions (up to 30 digits) parsed exactly and rounded once to float.

Sources: Hairer, Norsett & Wanner, *Solving ODEs I* (classic methods, DOPRI5, DOP853 and its
Fortran code); Bogacki & Shampine (1989); Shampine (1986) for DOPRI5's dense output (the
coefficients MATLAB's ode45 and SciPy's RK45 use); Tsitouras (2011) for Tsit5 and its interpolant
(with the corrected sign of the last error weight, see OrdinaryDiffEq.jl issue 1654).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional, Sequence

from odespec.errors import OdespecError
from odespec.solvers.tableau import ButcherTableau, Interpolant

__all__ = [
    "UnknownMethodError",
    "register_tableau",
    "unregister_tableau",
    "get_tableau",
    "method_names",
    "spec_method_names",
    "is_adaptive",
    "EULER",
    "MIDPOINT",
    "HEUN",
    "RALSTON",
    "RK4",
    "RK4_38",
    "BOSH3",
    "DOPRI5",
    "TSIT5",
    "DOPRI8",
    "IMPLICIT_METHODS",
    "OtherMethod",
    "OTHER_METHODS",
    "other_method",
]

Fr = Fraction

# --------------------------------------------------------------------------- classic methods

EULER = ButcherTableau(name="euler", order=1, a=((),), b=(1,), c=(0,))

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, a=((), (Fr(1, 2),)), b=(0, 1), c=(0, Fr(1, 2))
)

# Heun's method = explicit trapezoidal rule (2nd order).
HEUN = ButcherTableau(
    name="heun", order=2, a=((), (1,)), b=(Fr(1, 2), Fr(1, 2)), c=(0, 1), aliases=("heun2",)
)

# Heun's third-order method (Heun 1900; torchdiffeq's "heun3"): three stages at 0, 1/3, 2/3
HEUN3 = ButcherTableau(
    name="heun3", order=3, a=((), (Fr(1, 3),), (0, Fr(2, 3))), b=(Fr(1, 4), 0, Fr(3, 4)), c=(0, Fr(1, 3), Fr(2, 3))
)

# Heun-Euler 2(1): Heun's method with Euler's as the embedded estimate (torchdiffeq's
# "adaptive_heun")
ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun", order=2, a=((), (1,)), b=(Fr(1, 2), Fr(1, 2)), c=(0, 1),
    b_err=(Fr(-1, 2), Fr(1, 2)),
)

# Fehlberg's 2(1) pair (RKF12, Fehlberg 1969; torchdiffeq's "fehlberg2"): three stages, the
# first-order estimate b_hat = (1/256, 255/256, 0)
_FEHLBERG2_B = (Fr(1, 512), Fr(255, 256), Fr(1, 512))
_FEHLBERG2_BHAT = (Fr(1, 256), Fr(255, 256), Fr(0))
FEHLBERG2 = ButcherTableau(
    name="fehlberg2", order=2, a=((), (Fr(1, 2),), (Fr(1, 256), Fr(255, 256))), b=_FEHLBERG2_B,
    c=(0, Fr(1, 2), 1), b_err=tuple(x - y for x, y in zip(_FEHLBERG2_B, _FEHLBERG2_BHAT, strict=True)),
    aliases=("rkf12",),
)

# Ralston's 2nd-order method: the 2-stage method with minimal error bound.
RALSTON = ButcherTableau(
    name="ralston",
    order=2,
    a=((), (Fr(2, 3),)),
    b=(Fr(1, 4), Fr(3, 4)),
    c=(0, Fr(2, 3)),
    aliases=("ralston2",),
)

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    a=((), (Fr(1, 2),), (0, Fr(1, 2)), (0, 0, 1)),
    b=(Fr(1, 6), Fr(1, 3), Fr(1, 3), Fr(1, 6)),
    c=(0, Fr(1, 2), Fr(1, 2), 1),
    aliases=("classic_rk4",),
)

# Kutta's 3/8 rule. Note: torchdiffeq's method "rk4" is this one, not the classic RK4.
RK4_38 = ButcherTableau(
    name="rk4_38",
    order=4,
    a=((), (Fr(1, 3),), (Fr(-1, 3), 1), (1, -1, 1)),
    b=(Fr(1, 8), Fr(3, 8), Fr(3, 8), Fr(1, 8)),
    c=(0, Fr(1, 3), Fr(2, 3), 1),
    aliases=("rk4_alt", "three_eighths"),
)

# --------------------------------------------------------------------------- Bogacki-Shampine 3(2)

_BOSH3_B = (Fr(2, 9), Fr(1, 3), Fr(4, 9), Fr(0))
_BOSH3_BHAT = (Fr(7, 24), Fr(1, 4), Fr(1, 3), Fr(1, 8))

BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    a=((), (Fr(1, 2),), (0, Fr(3, 4)), _BOSH3_B[:3]),
    b=_BOSH3_B,
    c=(0, Fr(1, 2), Fr(3, 4), 1),
    b_err=tuple(x - y for x, y in zip(_BOSH3_B, _BOSH3_BHAT, strict=True)),
    fsal=True,
    aliases=("rk23", "bogacki_shampine"),
)

# --------------------------------------------------------------------------- Dormand-Prince 5(4)

_DOPRI5_B = (
    Fr(35, 384), Fr(0), Fr(500, 1113), Fr(125, 192), Fr(-2187, 6784), Fr(11, 84), Fr(0),
)
_DOPRI5_BHAT = (
    Fr(5179, 57600), Fr(0), Fr(7571, 16695), Fr(393, 640), Fr(-92097, 339200), Fr(187, 2100),
    Fr(1, 40),
)
# Shampine's 4th-order continuous extension (c6 optimal); row i holds the coefficients of
# theta^1..theta^4 in w_i(theta).
_DOPRI5_DENSE = (
    (1, Fr(-8048581381, 2820520608), Fr(8663915743, 2820520608), Fr(-12715105075, 11282082432)),
    (0, 0, 0, 0),
    (0, Fr(131558114200, 32700410799), Fr(-68118460800, 10900136933), Fr(87487479700, 32700410799)),
    (0, Fr(-1754552775, 470086768), Fr(14199869525, 1410260304), Fr(-10690763975, 1880347072)),
    (0, Fr(127303824393, 49829197408), Fr(-318862633887, 49829197408), Fr(701980252875, 199316789632)),
    (0, Fr(-282668133, 205662961), Fr(2019193451, 616988883), Fr(-1453857185, 822651844)),
    (0, Fr(40617522, 29380423), Fr(-110615467, 29380423), Fr(69997945, 29380423)),
)

DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    a=(
        (),
        (Fr(1, 5),),
        (Fr(3, 40), Fr(9, 40)),
        (Fr(44, 45), Fr(-56, 15), Fr(32, 9)),
        (Fr(19372, 6561), Fr(-25360, 2187), Fr(64448, 6561), Fr(-212, 729)),
        (Fr(9017, 3168), Fr(-355, 33), Fr(46732, 5247), Fr(49, 176), Fr(-5103, 18656)),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    c=(0, Fr(1, 5), Fr(3, 10), Fr(4, 5), Fr(8, 9), 1, 1),
    b_err=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_BHAT, strict=True)),
    fsal=True,
    interpolant=Interpolant(order=4, coeffs=_DOPRI5_DENSE),
    aliases=("dopri", "rk45", "dormand_prince"),
)

# --------------------------------------------------------------------------- Tsitouras 5(4)


def _poly_mul(p: Sequence[Fraction], q: Sequence[Fraction]) -> list[Fraction]:
    """Product of two polynomials given as coefficient lists, lowest power first."""
    out = [Fraction(0)] * (len(p) + len(q) - 1)
    for i, x in enumerate(p):
        for j, y in enumerate(q):
            out[i + j] += x * y
    return out


def _poly(*factors: Sequence[str | int]) -> list[Fraction]:
    """Expand a product of polynomials (coefficients as exact decimal strings, lowest first)."""
    acc = [Fraction(1)]
    for f in factors:
        acc = _poly_mul(acc, [Fraction(x) for x in f])
    return acc


def _monomial_rows(polys: Sequence[Sequence[Fraction]], degree: int) -> tuple[tuple[Fraction, ...], ...]:
    """Rows of theta^1..theta^degree coefficients; the theta^0 coefficient must vanish."""
    rows = []
    for p in polys:
        p = list(p) + [Fraction(0)] * (degree + 1 - len(p))
        if p[0] != 0:
            raise AssertionError("dense-output weight must vanish at theta = 0")
        rows.append(tuple(p[1 : degree + 1]))
    return tuple(rows)


_T = [0, 1]  # theta
_T2 = [0, 0, 1]  # theta^2
# Tsitouras (2011), the interpolant's b_i(theta) in the factored form of the paper.
_TSIT5_DENSE = _monomial_rows(
    [
        _poly(["-1.0530884977290216"], _T, ["-1.3299890189751412", 1],
              ["0.7139816917074209", "-1.4364028541716351", 1]),
        _poly(["0.1017"], _T2, ["1.2949852507374631", "-2.1966568338249754", 1]),
        _poly(["2.490627285651252793"], _T2, ["1.57803468208092486", "-2.38535645472061657", 1]),
        _poly(["-16.54810288924490272"], ["-1.21712927295533244", 1],
              ["-0.61620406037800089", 1], _T2),
        _poly(["47.37952196281928122"], ["-1.203071208372362603", 1],
              ["-0.658047292653547382", 1], _T2),
        _poly(["-34.87065786149660974"], ["-1.2", 1], ["-0.666666666666666667", 1], _T2),
        _poly(["2.5"], ["-1", 1], ["-0.6", 1], _T2),
    ],
    degree=4,
)

_TSIT5_B = (
    "0.09646076681806523", "0.01", "0.4798896504144996", "1.379008574103742",
    "-3.290069515436081", "2.324710524099774", "0",
)

TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    a=(
        (),
        ("0.161",),
        ("-0.008480655492356989", "0.335480655492357"),
        ("2.8971530571054935", "-6.359448489975075", "4.3622954328695815"),
        ("5.325864828439257", "-11.748883564062828", "7.4955393428898365", "-0.09249506636175525"),
        ("5.86145544294642", "-12.92096931784711", "8.159367898576159", "-0.071584973281401",
         "-0.02826905039406838"),
        _TSIT5_B[:6],
    ),
    b=_TSIT5_B,
    c=("0", "0.161", "0.327", "0.9", "0.9800255409045097", "1", "1"),
    # b - b_hat; the paper prints the last one as +1/66, the correct sign is negative.
    b_err=(
        "0.00178001105222577714", "0.0008164344596567469", "-0.007880878010261995",
        "0.1447110071732629", "-0.5823571654525552", "0.45808210592918697", Fr(-1, 66),
    ),
    fsal=True,
    interpolant=Interpolant(order=4, coeffs=_TSIT5_DENSE),
    aliases=("tsitouras5",),
)

# --------------------------------------------------------------------------- DOP853
# Hairer's DOP853: 12 stages + the FSAL stage f(t+h, y_next), error estimators of order 5 and 3
# combined as err5^2 / sqrt(err5^2 + 0.01 err3^2), and a 7th-order dense output that needs three
# extra stages. Decimal expansions from Hairer's Fortran code (dop853.f).

_DOP853_C = (
    "0.0", "0.526001519587677318785587544488e-01", "0.789002279381515978178381316732e-01",
    "0.118350341907227396726757197510", "0.281649658092772603273242802490", Fr(1, 3), "0.25",
    Fr(4, 13), Fr(127, 195), "0.6", Fr(6, 7), "1.0", "1.0",
)
# (row, column, value), zero entries omitted
_DOP853_A_SPARSE = {
    1: {0: "5.26001519587677318785587544488e-2"},
    2: {0: "1.97250569845378994544595329183e-2", 1: "5.91751709536136983633785987549e-2"},
    3: {0: "2.95875854768068491816892993775e-2", 2: "8.87627564304205475450678981324e-2"},
    4: {0: "2.41365134159266685502369798665e-1", 2: "-8.84549479328286085344864962717e-1",
        3: "9.24834003261792003115737966543e-1"},
    5: {0: "3.7037037037037037037037037037e-2", 3: "1.70828608729473871279604482173e-1",
        4: "1.25467687566822425016691814123e-1"},
    6: {0: "3.7109375e-2", 3: "1.70252211019544039314978060272e-1",
        4: "6.02165389804559606850219397283e-2", 5: "-1.7578125e-2"},
    7: {0: "3.70920001185047927108779319836e-2", 3: "1.70383925712239993810214054705e-1",
        4: "1.07262030446373284651809199168e-1", 5: "-1.53194377486244017527936158236e-2",
        6: "8.27378916381402288758473766002e-3"},
    8: {0: "6.24110958716075717114429577812e-1", 3: "-3.36089262944694129406857109825",
        4: "-8.68219346841726006818189891453e-1", 5: "2.75920996994467083049415600797e1",
        6: "2.01540675504778934086186788979e1", 7: "-4.34898841810699588477366255144e1"},
    9: {0: "4.77662536438264365890433908527e-1", 3: "-2.48811461997166764192642586468",
        4: "-5.90290826836842996371446475743e-1", 5: "2.12300514481811942347288949897e1",
        6: "1.52792336328824235832596922938e1", 7: "-3.32882109689848629194453265587e1",
        8: "-2.03312017085086261358222928593e-2"},
    10: {0: "-9.3714243008598732571704021658e-1", 3: "5.18637242884406370830023853209",
         4: "1.09143734899672957818500254654", 5: "-8.14978701074692612513997267357",
         6: "-1.85200656599969598641566180701e1", 7: "2.27394870993505042818970056734e1",
         8: "2.49360555267965238987089396762", 9: "-3.0467644718982195003823669022"},
    11: {0: "2.27331014751653820792359768449", 3: "-1.05344954667372501984066689879e1",
         4: "-2.00087205822486249909675718444", 5: "-1.79589318631187989172765950534e1",
         6: "2.79488845294199600508499808837e1", 7: "-2.85899827713502369474065508674",
         8: "-8.87285693353062954433549289258", 9: "1.23605671757943030647266201528e1",
         10: "6.43392746015763530355970484046e-1"},
    # row 12 is b: the FSAL stage
    12: {0: "5.42937341165687622380535766363e-2", 5: "4.45031289275240888144113950566",
         6: "1.89151789931450038304281599044", 7: "-5.8012039600105847814672114227",
         8: "3.1116436695781989440891606237e-1", 9: "-1.52160949662516078556178806805e-1",
         10: "2.01365400804030348374776537501e-1", 11: "4.47106157277725905176885569043e-2"},
    # extra stages for dense output
    13: {0: "5.61675022830479523392909219681e-2", 6: "2.53500210216624811088794765333e-1",
         7: "-2.46239037470802489917441475441e-1", 8: "-1.24191423263816360469010140626e-1",
         9: "1.5329179827876569731206322685e-1", 10: "8.20105229563468988491666602057e-3",
         11: "7.56789766054569976138603589584e-3", 12: "-8.298e-3"},
    14: {0: "3.18346481635021405060768473261e-2", 5: "2.83009096723667755288322961402e-2",
         6: "5.35419883074385676223797384372e-2", 7: "-5.49237485713909884646569340306e-2",
         10: "-1.08347328697249322858509316994e-4", 11: "3.82571090835658412954920192323e-4",
         12: "-3.40465008687404560802977114492e-4", 13: "1.41312443674632500278074618366e-1"},
    15: {0: "-4.28896301583791923408573538692e-1", 5: "-4.69762141536116384314449447206",
         6: "7.68342119606259904184240953878", 7: "4.06898981839711007970213554331",
         8: "3.56727187455281109270669543021e-1", 12: "-1.39902416515901462129418009734e-3",
         13: "2.9475147891527723389556272149", 14: "-9.15095847217987001081870187138"},
}
_DOP853_EXTRA_C = ("0.1", "0.2", "0.777777777777777777777777777778")
_DOP853_E5 = {
    0: "0.1312004499419488073250102996e-1", 5: "-0.1225156446376204440720569753e+1",
    6: "-0.4957589496572501915214079952", 7: "0.1664377182454986536961530415e+1",
    8: "-0.3503288487499736816886487290", 9: "0.3341791187130174790297318841",
    10: "0.8192320648511571246570742613e-1", 11: "-0.2235530786388629525884427845e-1",
}
# b_hat of the 3rd-order embedded formula
_DOP853_BHH = {0: "0.244094488188976377952755905512", 8: "0.733846688281611857341361741547",
               11: "0.220588235294117647058823529412e-1"}
# continuous-extension coefficients d_{4..7, i} over the 16 stages
_DOP853_D = (
    {0: "-0.84289382761090128651353491142e+1", 5: "0.56671495351937776962531783590",
     6: "-0.30689499459498916912797304727e+1", 7: "0.23846676565120698287728149680e+1",
     8: "0.21170345824450282767155149946e+1", 9: "-0.87139158377797299206789907490",
     10: "0.22404374302607882758541771650e+1", 11: "0.63157877876946881815570249290",
     12: "-0.88990336451333310820698117400e-1", 13: "0.18148505520854727256656404962e+2",
     14: "-0.91946323924783554000451984436e+1", 15: "-0.44360363875948939664310572000e+1"},
    {0: "0.10427508642579134603413151009e+2", 5: "0.24228349177525818288430175319e+3",
     6: "0.16520045171727028198505394887e+3", 7: "-0.37454675472269020279518312152e+3",
     8: "-0.22113666853125306036270938578e+2", 9: "0.77334326684722638389603898808e+1",
     10: "-0.30674084731089398182061213626e+2", 11: "-0.93321305264302278729567221706e+1",
     12: "0.15697238121770843886131091075e+2", 13: "-0.31139403219565177677282850411e+2",
     14: "-0.93529243588444783865713862664e+1", 15: "0.35816841486394083752465898540e+2"},
    {0: "0.19985053242002433820987653617e+2", 5: "-0.38703730874935176555105901742e+3",
     6: "-0.18917813819516756882830838328e+3", 7: "0.52780815920542364900561016686e+3",
     8: "-0.11573902539959630126141871134e+2", 9: "0.68812326946963000169666922661e+1",
     10: "-0.10006050966910838403183860980e+1", 11: "0.77771377980534432092869265740",
     12: "-0.27782057523535084065932004339e+1", 13: "-0.60196695231264120758267380846e+2",
     14: "0.84320405506677161018159903784e+2", 15: "0.11992291136182789328035130030e+2"},
    {0: "-0.25693933462703749003312586129e+2", 5: "-0.15418974869023643374053993627e+3",
     6: "-0.23152937917604549567536039109e+3", 7: "0.35763911791061412378285349910e+3",
     8: "0.93405324183624310003907691704e+2", 9: "-0.37458323136451633156875139351e+2",
     10: "0.10409964950896230045147246184e+3", 11: "0.29840293426660503123344363579e+2",
     12: "-0.43533456590011143754432175058e+2", 13: "0.96324553959188282948394950600e+2",
     14: "-0.39177261675615439165231486172e+2", 15: "-0.14972683625798562581422125276e+3"},
)


def _dense_row(entries: dict[int, str], length: int) -> list[Fraction]:
    row = [Fraction(0)] * length
    for j, v in entries.items():
        row[j] = Fraction(v)
    return row


def _dop853() -> ButcherTableau:
    s = 13  # 12 stages + FSAL stage
    n_all = 16  # + 3 extra dense-output stages
    b = _dense_row(_DOP853_A_SPARSE[12], s)
    a = tuple(tuple(_dense_row(_DOP853_A_SPARSE.get(i, {}), i)) for i in range(s))
    e5 = _dense_row(_DOP853_E5, s)
    bhh = _dense_row(_DOP853_BHH, s)
    e3 = [x - y for x, y in zip(b, bhh, strict=True)]
    extra_a = tuple(tuple(_dense_row(_DOP853_A_SPARSE[i], i)) for i in range(s, n_all))

    # Hairer's dense output (contd8): with theta in [0, 1] and the F's linear in the stages,
    #   y(theta) = y + h*theta*(F0 + (1-theta)*(F1 + theta*(F2 + (1-theta)*(F3 + theta*(F4
    #              + (1-theta)*(F5 + theta*F6))))))
    # F0 = sum b_i k_i, F1 = k_0 - F0, F2 = 2 F0 - k_0 - k_12, F3..F6 = sum d_{m,i} k_i.
    # Expanding the nested form gives w_i(theta) as polynomials of degree 7 in theta.
    bb = b + [Fraction(0)] * (n_all - s)
    unit = lambda j: [Fraction(int(i == j)) for i in range(n_all)]  # noqa: E731
    k0, k12 = unit(0), unit(12)
    phis = [
        bb,
        [x - y for x, y in zip(k0, bb, strict=True)],
        [2 * x - y - z for x, y, z in zip(bb, k0, k12, strict=True)],
    ] + [_dense_row(d, n_all) for d in _DOP853_D]
    one_minus = [1, -1]
    theta_pow = [
        _poly(_T),
        _poly(_T, one_minus),
        _poly(_T2, one_minus),
        _poly(_T2, one_minus, one_minus),
        _poly(_T2, _T, one_minus, one_minus),
        _poly(_T2, _T, one_minus, one_minus, one_minus),
        _poly(_T2, _T2, one_minus, one_minus, one_minus),
    ]
    weights = []
    for i in range(n_all):
        poly = [Fraction(0)] * 8
        for phi, p in zip(phis, theta_pow, strict=True):
            for deg, coef in enumerate(p):
                poly[deg] += phi[i] * coef
        weights.append(poly)
    interp = Interpolant(
        order=7,
        coeffs=_monomial_rows(weights, degree=7),
        extra_a=extra_a,
        extra_c=_DOP853_EXTRA_C,
    )
    return ButcherTableau(
        name="dopri8",
        order=8,
        a=a,
        b=b,
        c=_DOP853_C,
        b_err=e5,
        b_err_aux=e3,
        aux_weight=0.01,
        fsal=True,
        interpolant=interp,
        aliases=("dop853",),
    )


DOPRI8 = _dop853()

# --------------------------------------------------------------------------- implicit methods
#
# Hairer & Wanner, *Solving ODEs II*, sections IV.5 (Gauss and Radau IIA collocation methods) and
# IV.6 (SDIRK); Hosea & Shampine (1996) for TR-BDF2 as a three-stage DIRK. The names are
# torchdiffeq's. (torchdiffeq's gl4 lists c = (1/2 - sqrt(3)/6) twice; the nodes of the Gauss
# method are 1/2 -+ sqrt(3)/6, as the row sums of its own a say.)

_S2, _S3, _S6, _S15 = math.sqrt(2.0), math.sqrt(3.0), math.sqrt(6.0), math.sqrt(15.0)

IMPLICIT_EULER = ButcherTableau(name="implicit_euler", order=1, a=((1,),), b=(1,), c=(1,), implicit=True)

IMPLICIT_MIDPOINT = ButcherTableau(
    name="implicit_midpoint", order=2, a=((Fr(1, 2),),), b=(1,), c=(Fr(1, 2),), implicit=True
)

# the implicit trapezoidal rule (Crank-Nicolson): its first stage is f(t, y), explicit
TRAPEZOID = ButcherTableau(
    name="trapezoid", order=2, a=((0, 0), (Fr(1, 2), Fr(1, 2))), b=(Fr(1, 2), Fr(1, 2)), c=(0, 1), implicit=True
)

RADAU_IIA3 = ButcherTableau(
    name="radauIIA3", order=3, a=((Fr(5, 12), Fr(-1, 12)), (Fr(3, 4), Fr(1, 4))), b=(Fr(3, 4), Fr(1, 4)),
    c=(Fr(1, 3), 1), implicit=True,
)

RADAU_IIA5 = ButcherTableau(
    name="radauIIA5", order=5,
    a=(
        (11 / 45 - 7 * _S6 / 360, 37 / 225 - 169 * _S6 / 1800, -2 / 225 + _S6 / 75),
        (37 / 225 + 169 * _S6 / 1800, 11 / 45 + 7 * _S6 / 360, -2 / 225 - _S6 / 75),
        (4 / 9 - _S6 / 36, 4 / 9 + _S6 / 36, Fr(1, 9)),
    ),
    b=(4 / 9 - _S6 / 36, 4 / 9 + _S6 / 36, Fr(1, 9)),
    c=(2 / 5 - _S6 / 10, 2 / 5 + _S6 / 10, 1),
    implicit=True,
)

GL4 = ButcherTableau(
    name="gl4", order=4, a=((Fr(1, 4), 1 / 4 - _S3 / 6), (1 / 4 + _S3 / 6, Fr(1, 4))), b=(Fr(1, 2), Fr(1, 2)),
    c=(1 / 2 - _S3 / 6, 1 / 2 + _S3 / 6), implicit=True,
)

GL6 = ButcherTableau(
    name="gl6", order=6,
    a=(
        (Fr(5, 36), 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, Fr(2, 9), 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, Fr(5, 36)),
    ),
    b=(Fr(5, 18), Fr(4, 9), Fr(5, 18)),
    c=(1 / 2 - _S15 / 10, Fr(1, 2), 1 / 2 + _S15 / 10),
    implicit=True,
)

# the two-stage, L-stable SDIRK of order 2, gamma = 1 - 1/sqrt(2)
_GAMMA = (2 - _S2) / 2
SDIRK2 = ButcherTableau(
    name="sdirk2", order=2, a=((_GAMMA, 0), (1 - _GAMMA, _GAMMA)), b=(1 - _GAMMA, _GAMMA), c=(_GAMMA, 1),
    implicit=True,
)

# TR-BDF2: a trapezoidal stage to t + 2*gamma*h, then BDF2 to t + h (L-stable, stiffly accurate)
_TR_G, _TR_B = 1 - _S2 / 2, _S2 / 4
TRBDF2 = ButcherTableau(
    name="trbdf2", order=2, a=((0, 0, 0), (_TR_G, _TR_G, 0), (_TR_B, _TR_B, _TR_G)), b=(_TR_B, _TR_B, _TR_G),
    c=(0, 2 * _TR_G, 1), implicit=True,
)

IMPLICIT_METHODS = (IMPLICIT_EULER, IMPLICIT_MIDPOINT, TRAPEZOID, RADAU_IIA3, RADAU_IIA5, GL4, GL6, SDIRK2, TRBDF2)

# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OtherMethod:
    """A method of ``odeint`` that is no Runge-Kutta method, so no tableau: torchdiffeq's multistep
    Adams methods and its SciPy wrapper. ``kind``: ``"adams"`` or ``"scipy"``; ``implicit``: an
    Adams-Bashforth-Moulton predictor-corrector (else Adams-Bashforth alone). Specs do not name
    these (their methods are Runge-Kutta methods, which export to ONNX)."""

    name: str
    kind: str
    description: str
    implicit: bool = False

    @property
    def adaptive(self) -> bool:
        """SciPy's solvers choose their own steps; the Adams methods take fixed steps."""
        return self.kind == "scipy"


#: torchdiffeq's method names that are not Runge-Kutta methods (:mod:`odespec.solvers.multistep`,
#: :mod:`odespec.solvers.scipy_solver`)
OTHER_METHODS: dict[str, OtherMethod] = {m.name: m for m in (
    OtherMethod("explicit_adams", "adams", "fixed-step Adams-Bashforth of growing order (up to max_order - 1) "
                "after two RK4 steps"),
    OtherMethod("implicit_adams", "adams", "fixed-step Adams-Bashforth-Moulton predictor-corrector (up to "
                "max_iters corrections) after two RK4 steps", implicit=True),
    OtherMethod("fixed_adams", "adams", "torchdiffeq's alias of implicit_adams", implicit=True),
    OtherMethod("scipy_solver", "scipy", "SciPy's solve_ivp (options['solver']: RK45, RK23, DOP853, Radau, BDF, "
                "LSODA); no gradients through the forward solve"),
)}


def other_method(name: object) -> Optional[OtherMethod]:
    """The non-Runge-Kutta method ``odeint`` knows by ``name``, or None."""
    return OTHER_METHODS.get(name) if isinstance(name, str) else None


def not_runge_kutta(name: str) -> Optional[str]:
    """Why ``name`` (a method of ``odeint`` that is no Runge-Kutta method) is no tableau and no
    method of specs, and what to use there instead; None for any other name (the implicit
    Runge-Kutta methods are tableaus, and specs name them)."""
    known = OTHER_METHODS.get(name)
    if known is None:
        return None
    instead = "'dopri5' or 'dopri8'" if known.kind == "scipy" else "'rk4' or 'dopri5'"
    return (f"{name!r} is {known.description}: odeint(method={name!r}) runs it, but it is no Runge-Kutta "
            f"method, so it has no tableau and specs cannot name it (a spec's method exports to ONNX): use {instead}")


class UnknownMethodError(OdespecError, KeyError):
    """No Runge-Kutta method of that name is registered. ``suggestions`` holds close names."""

    def __init__(self, name: str, suggestions: Sequence[str], known: Sequence[str]):
        self.name = name
        self.suggestions = tuple(suggestions)
        msg = f"unknown ODE method {name!r}"
        if not_runge_kutta(name):
            msg = f"unknown ODE method: {not_runge_kutta(name)}"
        elif self.suggestions:
            msg += f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        msg += f" (known methods: {', '.join(known)})"
        self.message = msg
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message


_METHODS: dict[str, ButcherTableau] = {}  # canonical name -> tableau, in registration order
_LOOKUP: dict[str, str] = {}  # name or alias -> canonical name


def register_tableau(tableau: ButcherTableau) -> ButcherTableau:
    """Make ``tableau`` available by its name and aliases (to ``odeint(method=...)``, to specs'
    ``solver.method`` and to the spec schema). A name or alias that is already taken is refused
    with ``ValueError``, as in every odespec registry; :func:`unregister_tableau` first to
    replace a method. Returns the tableau.
    """
    if not isinstance(tableau, ButcherTableau):
        raise TypeError(f"expected a ButcherTableau, got {type(tableau).__name__}")
    if len(set(tableau.names)) != len(tableau.names):
        raise ValueError(f"tableau {tableau.name!r} lists a name twice: {tableau.names}")
    owner_of_name = _LOOKUP.get(tableau.name)
    if owner_of_name is not None:
        raise ValueError(
            f"ODE method name {tableau.name!r} is already registered"
            + ("" if owner_of_name == tableau.name else f" (as an alias of {owner_of_name!r})")
            + "; unregister_tableau it first to replace it, or choose another name"
        )
    for alias in tableau.aliases:
        owner = _LOOKUP.get(alias)
        if owner is not None:
            raise ValueError(f"alias {alias!r} of {tableau.name!r} is already used by {owner!r}")
    _METHODS[tableau.name] = tableau
    for n in tableau.names:
        _LOOKUP[n] = tableau.name
    return tableau


def unregister_tableau(name: str) -> ButcherTableau:
    """Remove a method (given by its canonical name or an alias) and return it."""
    tableau = get_tableau(name)
    del _METHODS[tableau.name]
    for n in tableau.names:
        _LOOKUP.pop(n, None)
    return tableau


def get_tableau(name: str) -> ButcherTableau:
    """The tableau registered under ``name`` (canonical name or alias).

    Raises :class:`UnknownMethodError` (a ``KeyError``) with did-you-mean suggestions.
    """
    canonical = _LOOKUP.get(name) if isinstance(name, str) else None
    if canonical is None:
        key = str(name)
        candidates = list(_LOOKUP)
        # case-insensitive exact match first, then fuzzy matches
        suggestions = [_LOOKUP[c] for c in candidates if c.lower() == key.lower()]
        if not suggestions:
            suggestions = [_LOOKUP[c] for c in difflib.get_close_matches(key.lower(), candidates, n=3, cutoff=0.6)]
        unique = list(dict.fromkeys(suggestions))
        raise UnknownMethodError(key, unique, method_names())
    return _METHODS[canonical]


def method_names() -> tuple[str, ...]:
    """Canonical names of all registered methods, in registration order."""
    return tuple(_METHODS)


def spec_method_names() -> tuple[str, ...]:
    """The registered methods a spec may name: every Runge-Kutta method, explicit or implicit (an
    implicit method's Newton iteration unrolls into the exported graph,
    :mod:`odespec.export.implicit_graph`)."""
    return tuple(_METHODS)


def is_adaptive(name: str) -> bool:
    """Whether the method has an error estimator (and so supports adaptive step sizes)."""
    return get_tableau(name).adaptive


for _t in (EULER, MIDPOINT, HEUN, HEUN3, RALSTON, RK4, RK4_38, ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8,
           *IMPLICIT_METHODS):
    register_tableau(_t)
del _t
