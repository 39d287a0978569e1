// One script tag on any site: <script src="https://<relay>/static/embed.js" data-organization-id="<uuid>"></script>
(() => {
  const script = document.currentScript
  const origin = new URL(script.src).origin
  const frame = document.createElement('iframe')
  frame.src = `${origin}/widget?org=${encodeURIComponent(script.dataset.organizationId)}`
  frame.title = 'Chat'
  frame.style.cssText = 'position:fixed;bottom:16px;right:16px;width:360px;height:520px;border:1px solid #ccc;border-radius:12px;background:#fff;z-index:2147483647'
  document.body.append(frame)
})()
