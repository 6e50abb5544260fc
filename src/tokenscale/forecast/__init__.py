"""forecast: the rest of a series' mean-loss curve from its first k checkpoints, by the paper's mechanism (learned
tokens keep their sigmoids, partial ones are refitted with the learned tokens' shape, the rest learn at the rate of
the spectrum's tail), with a bootstrap band over tokens and β (issue #33). :mod:`tokenscale.forecast.compute` holds
the math, :mod:`tokenscale.forecast.stage` the ``forecast`` command's driver and the backtest,
:mod:`tokenscale.forecast.figures` the figures."""
