/** A small line chart in SVG: the last samples of one series, scaled to its own maximum. */
export function Chart(props: { title: string; unit: string; values: number[]; span: string }) {
  const { values } = props;
  const w = 300;
  const h = 100;
  const max = Math.max(1, ...values);
  const n = Math.max(2, values.length);
  const points = values.map((v, i) => `${((i / (n - 1)) * w).toFixed(1)},${(h - (v / max) * (h - 4) - 2).toFixed(1)}`).join(" ");
  const last = values.length ? values[values.length - 1] : 0;
  const shown = Number.isInteger(last) ? String(last) : last.toFixed(1);
  return (
    <figure class="panel chart" style="margin: 0">
      <figcaption class="row">
        <strong class="grow">{props.title}</strong>
        <span class="small muted">
          now {shown} {props.unit} · max {Number.isInteger(max) ? max : max.toFixed(1)}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${w} ${h}`} preserveAspectRatio="none" role="img"
        aria-label={`${props.title} over the last ${props.span}: now ${shown} ${props.unit}, at most ${max.toFixed(0)}`}>
        <line class="axis" x1="0" y1={h - 1} x2={w} y2={h - 1} />
        {values.length > 1 && <polyline points={points} />}
      </svg>
    </figure>
  );
}
