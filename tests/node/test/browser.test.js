// End to end in a real browser (Debian's Chromium, driven by playwright-core): the widget page and
// the dashboard page, served by the relay, talking through it and PostgreSQL.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { createFixture, freePort, startRelay, stopRelay } from '../harness.js'

const WEB_DIR = fileURLToPath(new URL('../../../web/public', import.meta.url))
const SCREENSHOTS = process.env.CAMPFIRE_SCREENSHOTS ?? '/tmp/campfire-screenshots'
const UI_WAIT = 10_000

describe('widget and dashboard in Chromium', () => {
  let fixture, relay, port, browser
  const base = () => `http://127.0.0.1:${port}`
  const pages = []

  const restartRelay = async () => {
    await stopRelay(relay)
    relay = await startRelay(fixture.database, port, { CAMPFIRE_WEB_DIR: WEB_DIR })
  }

  /** A fresh browser profile (its own localStorage), i.e. a different visitor. */
  async function openPage(url, { blockWebSocket = false } = {}) {
    const context = await browser.newContext()
    const page = await context.newPage()
    if (blockWebSocket) await page.routeWebSocket(/realtime/, (ws) => ws.close())
    page.on('pageerror', (error) => console.error('page error:', error.message))
    await page.goto(url)
    await page.waitForSelector('body[data-ready="true"]', { timeout: UI_WAIT })
    pages.push(page)
    return page
  }

  const widget = (options) => openPage(`${base()}/widget?org=${fixture.org}`, options)
  const dashboard = () => openPage(`${base()}/dashboard#org=${fixture.org}&token=${fixture.agentToken}`)
  const send = async (page, text) => {
    await page.fill('#input', text)
    await page.press('#input', 'Enter')
  }
  const message = (page, text) => page.locator('#messages li', { hasText: text })
  /** The message once the server has stored it: the widget shows a send at once, as a draft. */
  const stored = (page, text) => message(page, text).and(page.locator('[data-id]'))

  /** Opens, on the dashboard, the conversation whose preview shows `text`; returns its id. */
  const openConversation = async (agent, text) => {
    const row = agent.locator('#conversations li', { hasText: text })
    await row.waitFor({ timeout: UI_WAIT })
    await row.click()
    await message(agent, text).waitFor({ timeout: UI_WAIT })
    return row.getAttribute('data-id')
  }

  /** An agent message committed while no relay runs; the relay then comes back on its port. */
  const sendWhileRelayDown = async (conversation, text) => {
    await stopRelay(relay)
    await fixture.sendAsAgent(conversation, text)
    await restartRelay()
  }

  /** Runs a test body; on failure, keeps a screenshot of every open page. */
  const withScreenshots = (name, body) => async () => {
    const before = pages.length
    try {
      await body()
    } catch (error) {
      mkdirSync(SCREENSHOTS, { recursive: true })
      for (const [i, page] of pages.slice(before).entries()) {
        const path = `${SCREENSHOTS}/${name.replace(/\W+/g, '-')}-${i}.png`
        await page.screenshot({ path }).catch(() => {})
        console.error(`screenshot: ${path}`)
      }
      throw error
    } finally {
      for (const page of pages.splice(before)) await page.context().close().catch(() => {})
    }
  }

  before(async () => {
    fixture = await createFixture()
    port = await freePort()
    relay = await startRelay(fixture.database, port, { CAMPFIRE_WEB_DIR: WEB_DIR })
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    })
  })

  after(async () => {
    await browser?.close()
    await stopRelay(relay)
    await fixture.drop()
  })

  test('a visitor message reaches the dashboard and the reply reaches the widget, with typing and read receipts', withScreenshots('chat', async () => {
    const visitor = await widget()
    const agent = await dashboard()
    await send(visitor, 'Hello, is anyone there?')
    await stored(visitor, 'Hello, is anyone there?').waitFor({ timeout: UI_WAIT })
    const row = agent.locator('#conversations li', { hasText: 'Hello, is anyone there?' })
    await row.waitFor({ timeout: UI_WAIT })
    await row.click()
    await message(agent, 'Hello, is anyone there?').waitFor({ timeout: UI_WAIT })

    // The agent opened it: the widget shows its message as read.
    await visitor.locator('#messages li.mine .receipt').first().waitFor({ timeout: UI_WAIT })

    // Typing, both ways.
    await agent.type('#input', 'Sure', { delay: 20 })
    await visitor.locator('#typing:not([hidden])').waitFor({ timeout: UI_WAIT })
    await visitor.type('#input', 'thanks', { delay: 20 })
    await agent.locator('#typing:not([hidden])').waitFor({ timeout: UI_WAIT })
    await visitor.fill('#input', '')

    await agent.fill('#input', 'Hi! Dana here, how can I help?')
    await agent.press('#input', 'Enter')
    await message(visitor, 'Hi! Dana here, how can I help?').waitFor({ timeout: UI_WAIT })
    await visitor.locator('#typing[hidden]').waitFor({ state: 'attached', timeout: UI_WAIT })
  }))

  test('the widget shows an agent going online and offline', withScreenshots('availability', async () => {
    const visitor = await widget()
    const agent = await dashboard()
    await agent.selectOption('#availability', 'online')
    await visitor.locator('#agent-status[data-online="true"]').waitFor({ timeout: UI_WAIT })
    await agent.selectOption('#availability', 'offline')
    await visitor.locator('#agent-status[data-online="false"]').waitFor({ timeout: UI_WAIT })
  }))

  test('two visitors never see each other\'s conversation', withScreenshots('isolation', async () => {
    const first = await widget()
    const second = await widget()
    await send(first, 'secret of the first visitor')
    await stored(first, 'secret of the first visitor').waitFor({ timeout: UI_WAIT })
    await send(second, 'the second visitor speaks')
    await stored(second, 'the second visitor speaks').waitFor({ timeout: UI_WAIT })
    await second.waitForTimeout(500)
    assert.equal(await message(second, 'secret of the first visitor').count(), 0)
    assert.equal(await message(first, 'the second visitor speaks').count(), 0)
  }))

  test('a relay restart mid-conversation loses nothing and both pages recover by themselves', withScreenshots('restart', async () => {
    const visitor = await widget()
    const agent = await dashboard()
    await send(visitor, 'before the restart')
    const conversation = await openConversation(agent, 'before the restart')
    await sendWhileRelayDown(conversation, 'sent while the relay was down')

    await message(visitor, 'sent while the relay was down').waitFor({ timeout: UI_WAIT })
    await message(agent, 'sent while the relay was down').waitFor({ timeout: UI_WAIT })
    await send(visitor, 'after the restart')
    await message(agent, 'after the restart').waitFor({ timeout: UI_WAIT })
  }))

  // The dashboard opens after the visitor's message, so none of its channels has seen an event
  // (no cursor to resume from) when the relay goes down: it must still catch up by itself.
  test('a dashboard that has received no event yet catches up after a relay restart', withScreenshots('restart-fresh', async () => {
    const visitor = await widget()
    await send(visitor, 'before the dashboard opened')
    await stored(visitor, 'before the dashboard opened').waitFor({ timeout: UI_WAIT })
    const agent = await dashboard()
    const conversation = await openConversation(agent, 'before the dashboard opened')
    await sendWhileRelayDown(conversation, 'sent while the relay was down, again')

    await message(agent, 'sent while the relay was down, again').waitFor({ timeout: UI_WAIT })
    await agent.locator('#conversations li', { hasText: 'sent while the relay was down, again' }).waitFor({ timeout: UI_WAIT })
  }))

  test('with the WebSocket blocked the widget still sends and receives, by polling', withScreenshots('polling', async () => {
    const visitor = await widget({ blockWebSocket: true })
    await visitor.locator('#connection[data-state="fallback"]').waitFor({ timeout: UI_WAIT })
    await send(visitor, 'sent without a socket')
    await stored(visitor, 'sent without a socket').waitFor({ timeout: UI_WAIT })
    const agent = await dashboard()
    const row = agent.locator('#conversations li', { hasText: 'sent without a socket' })
    await row.waitFor({ timeout: UI_WAIT })
    const conversation = await row.getAttribute('data-id')
    await fixture.sendAsAgent(conversation, 'delivered by polling')
    await message(visitor, 'delivered by polling').waitFor({ timeout: UI_WAIT })
  }))

  test('the dashboard holds the channels of the open conversation only, however many it opened', withScreenshots('channels', async () => {
    const texts = ['first of many', 'second of many', 'third of many', 'fourth of many']
    for (const text of texts) {
      const visitor = await widget()
      await send(visitor, text)
      await stored(visitor, text).waitFor({ timeout: UI_WAIT })
      await visitor.context().close()
    }
    const agent = await dashboard()
    const channels = async () => {
      const metrics = await (await fetch(`${base()}/metrics`)).text()
      return Number(metrics.match(/^campfire_channels (\d+)$/m)[1])
    }
    await openConversation(agent, texts[0])
    await agent.waitForTimeout(500)
    const withOne = await channels()
    for (const text of texts.slice(1)) await openConversation(agent, text)
    await agent.waitForTimeout(500)
    assert.equal(await channels(), withOne, 'opening more conversations leaves no channel behind')
  }))
})
