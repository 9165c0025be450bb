// The operator console's only script: draws the charts whose data the page carries in data-chart attributes
// (JSON, escaped like every other attribute). Served from this server; uPlot is loaded before it.
(() => {
  const PALETTE = ['#4b3fd9', '#d9483f', '#1e7b34', '#c28a00', '#0b7fa8', '#8e3fd9', '#6b6b73', '#d93f9a'];

  function draw(element) {
    let spec;
    try {
      spec = JSON.parse(element.dataset.chart || '{}');
    } catch {
      return;
    }
    if (!Array.isArray(spec.x) || spec.x.length === 0 || typeof window.uPlot !== 'function') {
      element.textContent = spec.empty || 'No data yet';
      element.classList.add('empty');
      element.dataset.rendered = 'empty';
      return;
    }
    const bars = spec.kind === 'bars' && typeof window.uPlot.paths?.bars === 'function';
    const series = [{}];
    spec.series.forEach((entry, index) => {
      const color = PALETTE[index % PALETTE.length];
      series.push({
        label: entry.label,
        stroke: color,
        fill: bars ? `${color}55` : undefined,
        width: 2,
        points: { show: !bars && spec.x.length < 60 },
        paths: bars ? window.uPlot.paths.bars({ size: [0.6, 40] }) : undefined,
        ...(spec.step ? { paths: window.uPlot.paths.stepped({ align: 1 }) } : {}),
      });
    });
    const width = Math.max(320, Math.min(680, element.clientWidth || 640));
    const options = {
      title: spec.title,
      width,
      height: 240,
      series,
      scales: { x: { time: true } },
      axes: [{}, { size: 70 }],
    };
    const data = [spec.x, ...spec.series.map((entry) => entry.values)];
    element.chart = new window.uPlot(options, data, element);
    element.dataset.rendered = 'chart';
  }

  function start() {
    for (const element of document.querySelectorAll('[data-chart]')) draw(element);
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
