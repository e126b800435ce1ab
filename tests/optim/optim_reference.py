"""Float64 reference optimizers for the optim tests (written from the formulas, not the code)."""
import numpy


def sgd_reference(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """Run SGD over the list of gradients; returns the final param (float64)."""
    p = numpy.array(p, dtype=numpy.float64)
    buf = numpy.zeros_like(p)
    for g in grads:
        g = numpy.array(g, dtype=numpy.float64) + weight_decay * p
        if momentum:
            buf = momentum * buf + g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        p = p - lr * d
    return p


def adam_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, lrs=None):
    """Run AdamW over the list of gradients; returns (param, m, v) (float64)."""
    p = numpy.array(p, dtype=numpy.float64)
    m = numpy.zeros_like(p)
    v = numpy.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        a = lr if lrs is None else lrs[t - 1]
        g = numpy.asarray(g, dtype=numpy.float64)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p * (1 - a * weight_decay) - a * m_hat / (numpy.sqrt(v_hat) + eps)
    return p, m, v
