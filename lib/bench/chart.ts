// Charts of a `batchnorm bench` report, drawn by Vega-Lite compiled to Vega and rendered
// headless to SVG (vega's View.toSVG: no browser, no canvas). Both packages are optional:
// loaded here on first use only, so `require('batchnorm')` and a bench without --svg or
// --html never load them. The bars of the results layer are named "results" and the
// points of a sweep "sweep": one mark per measured number, which tests count.
import type { BenchReport } from './report';

export class ChartUnavailable extends Error {
  override name = 'ChartUnavailable';
}

interface Renderer {
  compile(spec: object): { spec: object };
  View: new (runtime: unknown, opts: object) => { toSVG(): Promise<string>; finalize(): void };
  parse(spec: object): unknown;
}

// A specifier in a variable keeps TypeScript from resolving (and requiring) the optional
// packages at build time; import() because both are ES modules.
const importOptional = (m: string): Promise<Record<string, unknown>> => import(m);

/** Loads vega and vega-lite, or throws ChartUnavailable with what to install. */
export async function loadRenderer(): Promise<Renderer> {
  try {
    const [vega, vl] = await Promise.all([importOptional('vega'), importOptional('vega-lite')]);
    return { compile: vl.compile as Renderer['compile'], View: vega.View as Renderer['View'], parse: vega.parse as Renderer['parse'] };
  } catch (e) {
    throw new ChartUnavailable(
      '--svg and --html draw with the optional packages vega and vega-lite, which are not installed here ' +
      `(${(e as Error).message.split('\n')[0]}). Install them beside batchnorm: npm install vega vega-lite`,
    );
  }
}

const SIZE_LABEL = "datum.value >= 1073741824 ? format(datum.value / 1073741824, '.0f') + ' GiB' : " +
  "datum.value >= 1048576 ? format(datum.value / 1048576, '.0f') + ' MiB' : format(datum.value / 1024, '.0f') + ' KiB'";

function title(r: BenchReport): object {
  const m = r.machine;
  const where = [m.cpu + (m.threads ? `, ${m.threads} threads` : ''), m.gpu ? `${m.gpu}` : null].filter(Boolean).join(' · ');
  return {
    text: r.settings.sweep ? 'batchnorm bench --sweep: achieved GB/s against size' : 'batchnorm bench: achieved GB/s (bar) against the floor (black tick)',
    subtitle: [
      `${where} · batchnorm ${r.version}`,
      `median of up to ${r.settings.reps} runs` +
        (r.settings.sweep ? '; dashed: bandwidth floors at the largest size' : '; label = time ÷ floor time (1× = at the floor)'),
    ],
    anchor: 'start',
  };
}

/** Vega-Lite spec of the report: bars per op/workload/implementation, or the sweep's lines. */
export function chartSpec(r: BenchReport): object {
  const rows = r.results.map((x) => ({
    op: x.op, workload: x.workload, bytes: x.bytes, impl: `batchnorm ${x.backend}`, gbs: x.gbs,
    floorGbs: x.movedBytes / (x.floorMs * 1e6), ratio: `${x.floorRatio.toFixed(2)}×`, ms: x.ms,
  }));
  for (const p of r.peers) {
    for (const x of p.results) {
      rows.push({
        op: x.op, workload: x.workload, bytes: x.bytes, impl: `${p.peer} ${x.device}`, gbs: x.gbs,
        floorGbs: x.movedBytes / (x.floorMs * 1e6), ratio: `${x.floorRatio.toFixed(2)}×`, ms: x.ms,
      });
    }
  }
  const base = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: title(r),
    config: {
      font: 'DejaVu Sans, Helvetica, Arial, sans-serif', view: { stroke: '#ddd' }, axis: { labelFontSize: 11, titleFontSize: 12 },
      legend: { labelLimit: 320 },
    },
    background: 'white',
  };
  if (r.settings.sweep) {
    const rules = r.floors.sweepReference.map((f) => ({ label: f.label, gbs: f.gbs }));
    const series = { field: 'series', type: 'nominal', title: 'op (implementation)' };
    const multi = new Set(rows.map((x) => x.workload.split('@')[0])).size > 1;
    return {
      ...base,
      width: 640,
      height: 360,
      data: { values: rows.map((x) => ({ ...x, series: `${multi ? `${x.workload.split('@')[0]} ` : ''}${x.op} (${x.impl.replace('batchnorm ', '')})` })) },
      layer: [
        { mark: { type: 'line', strokeWidth: 1.5 }, encoding: { x: { field: 'bytes', type: 'quantitative' }, y: { field: 'gbs', type: 'quantitative' }, color: series } },
        {
          name: 'sweep',
          mark: { type: 'point', filled: true, size: 30 },
          encoding: {
            x: {
              field: 'bytes', type: 'quantitative', scale: { type: 'log', base: 2 }, title: 'bytes of x',
              axis: { labelExpr: SIZE_LABEL, values: [...new Set(rows.map((x) => x.bytes))].sort((a, b) => a - b), labelAngle: -40, labelOverlap: false },
            },
            y: { field: 'gbs', type: 'quantitative', title: 'achieved GB/s (bytes that must move / median time)' },
            color: series,
            tooltip: [{ field: 'series' }, { field: 'bytes' }, { field: 'gbs', format: '.1f' }, { field: 'ratio', title: '× floor' }],
          },
        },
        {
          data: { values: rules },
          layer: [
            { mark: { type: 'rule', strokeDash: [6, 4], color: '#555' }, encoding: { y: { field: 'gbs', type: 'quantitative' } } },
            {
              mark: { type: 'text', align: 'right', dy: -5, color: '#333', fontSize: 10 },
              encoding: { y: { field: 'gbs', type: 'quantitative' }, x: { value: 636 }, text: { field: 'label' } },
            },
          ],
        },
      ],
    };
  }
  const impls = [...new Set(rows.map((x) => x.impl))];
  const workloads = [...new Set(rows.map((x) => x.workload))];
  const color = { field: 'impl', type: 'nominal', title: 'implementation', scale: { domain: impls } };
  const y = { field: 'workload', type: 'nominal', title: null, sort: workloads };
  return {
    ...base,
    data: { values: rows },
    facet: { row: { field: 'op', type: 'nominal', title: null, sort: [...new Set(rows.map((x) => x.op))], header: { labelAngle: 0, labelAlign: 'left', labelFontSize: 12, labelFontWeight: 'bold' } } },
    resolve: { scale: { x: 'shared' } },
    spec: {
      width: 560,
      height: { step: Math.max(10, Math.round(26 / Math.max(1, impls.length)) + 4) },
      layer: [
        {
          name: 'results',
          mark: { type: 'bar', height: { band: 0.9 } },
          encoding: {
            y, yOffset: { field: 'impl', sort: impls }, color,
            x: { field: 'gbs', type: 'quantitative', title: 'GB/s: bytes that must move / median time (higher is better)' },
            tooltip: [{ field: 'op' }, { field: 'workload' }, { field: 'impl' }, { field: 'ms', format: '.3f' }, { field: 'gbs', format: '.1f' }, { field: 'ratio', title: '× floor' }],
          },
        },
        {
          name: 'floors',
          mark: { type: 'tick', orient: 'vertical', color: 'black', thickness: 2, bandSize: 12 },
          encoding: { y, yOffset: { field: 'impl', sort: impls }, x: { field: 'floorGbs', type: 'quantitative' } },
        },
        {
          mark: { type: 'text', align: 'left', dx: 4, fontSize: 9, color: '#333' },
          encoding: { y, yOffset: { field: 'impl', sort: impls }, x: { field: 'gbs', type: 'quantitative' }, text: { field: 'ratio' } },
        },
      ],
    },
  };
}

export async function renderSvg(r: BenchReport, renderer: Renderer): Promise<string> {
  const vgSpec = renderer.compile(chartSpec(r)).spec;
  const view = new renderer.View(renderer.parse(vgSpec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** A self-contained page: the SVG inline, the table of numbers under it. */
export function htmlPage(r: BenchReport, svg: string, table: string): string {
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>batchnorm bench ${esc(r.version)}</title>
<style>body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em;color:#222}pre{font-size:12px}</style></head>
<body>
${svg}
<pre>${esc(table)}</pre>
</body></html>
`;
}
