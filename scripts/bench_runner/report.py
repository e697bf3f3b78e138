"""What the runner prints: the table of results and the floor, or the
scale-out set's table (`scaleout_table`)."""


def fmt(value):
    if value is None:
        return '-'
    if isinstance(value, int):
        return f'{value:,}'
    if abs(value) >= 1000:
        return f'{value:,.0f}'
    if abs(value) >= 100:
        return f'{value:.0f}'
    if abs(value) >= 10:
        return f'{value:.1f}'
    return f'{value:.2f}'


def table(report):
    rows = [('workload', 'enc', 'unit', 'ours', 'ZEO 6.2', 'ours/ZEO', 'floor',
             'ours/floor', 'goal', 'met?')]
    for r in report['results']:
        met = {True: 'yes', False: 'NO', None: '?'}[r['met']]
        if r['errors']:
            met += ' (errors: ' + ', '.join(r['errors']) + ')'
        ratio = f"{r['ratio']:.2f}x" if r['ratio'] is not None else '-'
        # Latencies measured against the floor show it beside them.
        floor_ratio = r.get('floor_ratio')
        rows.append((r['title'], r.get('encoding', '-'), r['unit'],
                     fmt(r['ours']), fmt(r['zeo']), ratio,
                     fmt(r['floor']) if r.get('floor') else '',
                     f'{floor_ratio:.2f}x' if floor_ratio else '',
                     r['goal_text'], met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) if i < 3 or i == 9 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append('  '.join(cells).rstrip())
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    floor = report['floor_us']
    if floor:
        lines.append('')
        lines.append('floor, length-prefixed echo over 127.0.0.1 (µs per round trip):')
        for key, label in (('blocking', 'blocking sockets (thread server)'),
                           ('blocking_server_cpu',
                            'blocking server CPU per round trip'),
                           ('asyncio', 'asyncio server and asyncio client'),
                           ('asyncio_server_blocking_client',
                            'asyncio server, blocking client'),
                           ('asyncio_server_cpu',
                            'asyncio server CPU per round trip'),
                           ('asyncio_buffered',
                            'asyncio, BufferedProtocol both sides'),
                           ('asyncio_buffered_server_cpu',
                            'same, server CPU per round trip'),
                           ('uvloop_buffered',
                            'uvloop, BufferedProtocol both sides'),
                           ('uvloop_buffered_server_cpu',
                            'same, server CPU per round trip')):
            if key in floor:
                lines.append(f'  {label:36} {floor[key]:8.1f}')
    mode = 'quick' if report['quick'] else 'full'
    lines.append('')
    lines.append(f"{mode} run, medians of {report['repeat']} run(s) each, "
                 f"{report['seconds']:.0f} s, load average before "
                 f"{report['machine']['loadavg_before'][0]:.2f}")
    return '\n'.join(lines)


def scaleout_table(report):
    """The scale-out set: each row's value through a front, on RelStorage
    used directly and through our FileStorage server, its ratio, its goal."""
    rows = [('workload', 'unit', 'front', 'RelStorage', 'FileStorage srv',
             'ratio', 'goal', 'met?')]
    for r in report['results']:
        met = {True: 'yes', False: 'NO', None: '-'}[r['met']]
        if r['errors']:
            met += ' (errors: ' + ', '.join(r['errors']) + ')'
        ratio = f"{r['ratio']:.2f}x {r['ratio_text']}" if r['ratio'] is not None else '-'
        values = r['values']
        rows.append((r['title'], r['unit'], fmt(values.get('front')),
                     fmt(values.get('direct')) if 'direct' in values else '',
                     fmt(values.get('filestorage')) if 'filestorage' in values else '',
                     ratio, r['goal_text'], met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) if i < 2 or i >= 5 else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append('  '.join(cells).rstrip())
        if n == 0:
            lines.append('  '.join('-' * w for w in widths))
    mode = 'quick' if report['quick'] else 'full'
    lines.append('')
    lines.append('front: a zeo server (runzeo, commit-source postgresql) over RelStorage '
                 'on PostgreSQL;')
    lines.append('RelStorage: a ZODB DB on RelStorage in the client process; FileStorage '
                 'srv: our server.')
    lines.append(f"{mode} run, medians of {report['repeat']} run(s) each, "
                 f"{report['seconds']:.0f} s, load average before "
                 f"{report['machine']['loadavg_before'][0]:.2f}")
    return '\n'.join(lines)
